"""Issue 14 — control-plane replicas on one PostgreSQL: the write path on PostgreSQL next to
SQLite's, and a write on one replica reaching another.

At each N (1k, 100k and 1M keys+contracts; --quick: 1k) the bench builds the same catalogue
twice, as part 4 does (scale.py: the org, plan and API through the HTTP API, the clients, keys
and contracts written in bulk, bulk.py): once in a SQLite file, once in a PostgreSQL database
of a private PostgreSQL 15 cluster (postgres.py, durability as shipped). The real `tollgate
serve` opens each (the first open builds the stored snapshot buckets), again (measured once
the background consistency check of that start has ended), and is checked: its
revision is the bulk write's, a bulk client's contract reads back through `/v1`, and the first
write's delta carries a bulk key. Then, in interleaved rounds (the two backends alternate,
first one then the other), 1 and then 8 writers each create and delete a contract of their own
client back to back through the HTTP API for a few seconds: request-to-2xx latency and writes
per second, side by side on the same machine in the same minutes.

At the largest N, a second replica on the same PostgreSQL database (a data directory of its
own, the same secrets) and an Envoy with 2 workers from `tollgate envoy-config` polling it.
A contract is created or deleted on replica A; the bench has already sent replica B a long
poll (`GET /v1/snapshot?since=<held revision>&wait=30`, as the gateway's poller asks) and
times B's answer carrying the new revision, then polls the gateway's workers until both
enforce it (as part 3 does). Last, 8 writers on A alone against 4 on A and 4 on B at once:
what the revision row's lock (`SELECT … FOR UPDATE`, every write of every replica) does to
writes from two replicas.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import random
import re
import threading
import time
from dataclasses import dataclass, field

from . import bulk, live, postgres, scale
from . import envoy as e
from .context import REPO, Bench
from .processes import wait_until
from .report import SectionReport, table
from .scale import API, LIMITS, ORG, PLAN, PREFIX, churn_contract, mib, percentile, rss_bytes, timings

NOTES = REPO / "bench" / "notes" / "replicas.md"
PATH = scale.PATH
WORKERS = 2
LOAD_DEADLINE_S = 900.0
WRITER_COUNTS = (1, 8)
# Bulk clients with a key and no contract: writer w uses spare client n + w; the propagation
# changes use n + max(WRITER_COUNTS).
SPARE = max(WRITER_COUNTS) + 1
CHANGE_DEADLINE_S = 30.0
LONG_POLL_S = 30
WAITING = re.compile(r"^tollgate_snapshot_long_polls_waiting (\d+)", re.M)
# Part 4's goals for the write path (issue 12), and part 3's for propagation, as yardsticks.
GOAL_WRITE_P99_MS = scale.GOAL_WRITE_P99_MS
GOAL_WRITES_PER_S = scale.GOAL_WRITES_PER_S
GOAL_PROPAGATION_P99_MS = 200.0


@dataclass
class Writes:
    """Latencies (ms, request to 2xx) and the span of the runs of one writer count."""

    ms: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return len(self.ms) / self.seconds if self.seconds else 0.0


@dataclass
class Catalogue:
    """Catalogue N on one backend, in the real control plane."""

    backend: str  # "SQLite" or "PostgreSQL"
    n: int
    cp: live.ControlPlane
    insert_s: float
    open_s: float
    build_ms: int | None
    reopen_s: float = 0.0
    rss: int = 0
    writes: dict[int, Writes] = field(default_factory=dict)
    # PostgreSQL: pg_stat_wal's growth over each writer count's runs.
    wal: dict[int, dict[str, float]] = field(default_factory=dict)


def expect(ok: bool, what: str) -> None:
    if not ok:
        raise RuntimeError(f"replicas: {what}")


def check_opened(cp: live.ControlPlane, n: int, revision: int) -> None:
    """The control plane serves the bulk catalogue: at the bulk write's revision, with a bulk
    client's contract readable through the management API."""
    expect(cp.revision() == revision, f"{cp.name} opened at revision {cp.revision()}, not the bulk write's {revision}")
    contracts = cp.ok("GET", f"/v1/orgs/{ORG}/clients/{bulk.client_id(0)}/versions/1/contracts")
    items = contracts if isinstance(contracts, list) else contracts.get("items", contracts.get("contracts", []))
    expect(len(items) == 1, f"{cp.name}: bulk client 0 has {len(items)} contracts, not 1: {str(contracts)[:200]}")


def check_delta_has_key(cp: live.ControlPlane, held: int, n: int) -> None:
    """The delta from `held` (cut by the contract just created for spare client n) carries
    bulk key n's digest: the bulk rows are in the stored buckets."""
    status, body = e.http_get(f"{cp.url}/v1/snapshot?since={held}", {"authorization": f"Bearer {live.SECRETS['TOLLGATE_GATEWAY_TOKEN']}"}, timeout_s=600)
    expect(status == 200, f"{cp.name}: ?since={held} answered {status}")
    digest = hashlib.sha256(bulk.api_key(n).encode()).hexdigest()
    found = any(k.get("sha256") == digest for c in json.loads(body).get("clients", []) for k in c.get("keys", []))
    expect(found, f"{cp.name}: the delta after a contract for client {n} lacks its key")


CHECKED = "stored snapshot checked against the catalogue"


def start_checked(cp: live.ControlPlane) -> None:
    """Starts `cp` and waits for the consistency check every start runs in the background
    (every stored bucket rendered again: seconds of CPU and reads at a million keys) to end, so
    that it does not share the measured writes' time."""
    done = cp.log_path.read_text(errors="replace").count(CHECKED) if cp.log_path.exists() else 0
    cp.start(deadline_s=LOAD_DEADLINE_S)
    wait_until(lambda: cp.log_path.read_text(errors="replace").count(CHECKED) > done, LOAD_DEADLINE_S, f"{cp.name}'s consistency check", interval_s=0.2)


def catalogue(bench: Bench, n: int, cluster: postgres.Cluster | None) -> Catalogue:
    backend = "SQLite" if cluster is None else "PostgreSQL"
    name = f"replicas-{backend.lower()}-{n}"
    db = f"catalogue_{n}"
    url = None if cluster is None else cluster.create_database(db)
    cp = live.ControlPlane(bench, name, debug=True, database=url).start()
    cp.seed(ORG, PLAN, LIMITS, API, PREFIX)
    seeded = cp.revision()
    cp.stop()
    if cluster is None:
        insert_s = bulk.insert_clients(cp.database, ORG, API, PLAN, n, spare=SPARE)
    else:
        insert_s = bulk.insert_clients_postgres(cluster, db, ORG, API, PLAN, n, spare=SPARE)
    cp.start(deadline_s=LOAD_DEADLINE_S)
    opened = Catalogue(backend, n, cp, insert_s, cp.start_seconds, None)
    built = timings(cp).get(cp.revision())
    opened.build_ms = None if built is None else built.ms
    check_opened(cp, n, seeded + 1)
    cp.stop()
    start_checked(cp)
    opened.reopen_s = cp.start_seconds
    check_opened(cp, n, seeded + 1)
    held = cp.revision()
    made = cp.contract(ORG, bulk.client_id(n), API, PLAN)
    check_delta_has_key(cp, held, n)
    cp.delete_contract(ORG, bulk.client_id(n), made)
    bench.log(
        f"replicas {n:,} on {backend}: bulk insert {insert_s:.1f}s, first open {opened.open_s:.1f}s "
        f"(build {opened.build_ms} ms), open {opened.reopen_s:.2f}s"
    )
    return opened


def write_storm(planes: list[live.ControlPlane], writers: int, n: int, seconds: float) -> Writes:
    """`writers` threads (spread over `planes` in turn), each creating and deleting a contract of
    its own spare client back to back for `seconds`."""
    stop = threading.Event()
    lock = threading.Lock()
    samples: list[float] = []
    errors: list[BaseException] = []

    threads = [
        threading.Thread(
            target=churn_contract,
            args=(planes[w % len(planes)], bulk.client_id(n + w), stop, samples, lock, errors),
        )
        for w in range(writers)
    ]
    started = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(timeout=120)
    elapsed = time.monotonic() - started
    if errors:
        raise errors[0]
    return Writes(samples, elapsed)


def measure_writes(bench: Bench, pair: list[Catalogue], rounds: int, seconds: float, cluster: postgres.Cluster) -> None:
    """Interleaved rounds: each writer count on each backend, the backends' order flipped every
    round, so that both see the same minutes of a shared machine."""
    for r in range(rounds):
        for writers in WRITER_COUNTS:
            for c in pair if r % 2 == 0 else reversed(pair):
                before = cluster.wal() if c.backend == "PostgreSQL" else {}
                run = write_storm([c.cp], writers, c.n, seconds)
                total = c.writes.setdefault(writers, Writes())
                total.ms += run.ms
                total.seconds += run.seconds
                if before:
                    grown = c.wal.setdefault(writers, {})
                    for k, v in cluster.wal().items():
                        grown[k] = grown.get(k, 0.0) + v - before[k]
        bench.log(
            f"replicas {pair[0].n:,} writes round {r + 1}/{rounds}: "
            + "; ".join(f"{c.backend} " + ", ".join(f"{w}w {c.writes[w].rate:.0f}/s" for w in WRITER_COUNTS) for c in pair)
        )
    for c in pair:
        assert c.cp.process is not None
        c.rss = rss_bytes(c.cp.process.pid)


STATEMENT = re.compile(r"\[(\d+)\] LOG:  (?:statement|execute [^:]*): (.*)")


@dataclass
class Statements:
    """What the server executed for some writes on one replica, from its statement log."""

    writes: int
    write_connection: int  # statements on the connection that took the revision row's lock
    others: int  # on the replica's other connections (readers, the follower) meanwhile


def count_statements(bench: Bench, cluster: postgres.Cluster, c: Catalogue, writers: int, seconds: float) -> Statements:
    """`writers` writers for `seconds` on `c` (as in the measured runs) with every statement
    logged (not timed: logging costs), counted per server process."""
    write_storm([c.cp], writers, c.n, 0.2)  # every statement prepared
    offset = cluster.log_path.stat().st_size
    cluster.log_statements(True)
    try:
        run = write_storm([c.cp], writers, c.n, seconds)
    finally:
        cluster.log_statements(False)
    with open(cluster.log_path, "rb") as log:
        log.seek(offset)
        lines = log.read().decode(errors="replace").splitlines()
    by_pid: dict[str, list[str]] = {}
    for line in lines:
        m = STATEMENT.search(line)
        if m and "pg_reload_conf" not in m[2] and "ALTER SYSTEM" not in m[2]:
            by_pid.setdefault(m[1], []).append(m[2])
    writer = next((pid for pid, sql in by_pid.items() if any("FOR UPDATE" in q for q in sql)), None)
    expect(writer is not None, "no statement log line took the revision row's lock")
    mine = len(by_pid[writer])  # type: ignore[index]
    others = sum(len(v) for pid, v in by_pid.items() if pid != writer)
    writes = len(run.ms)
    bench.log(f"replicas {c.n:,}, {writers} writer(s): {mine / writes:.1f} statements per write on the write connection, {others / writes:.1f} on others")
    return Statements(writes, mine, others)


@dataclass
class Propagation:
    n: int
    changes: int
    write_ms: list[float]  # on A: request to 2xx
    answered_ms: list[float]  # A's 2xx to B's long poll answering with the new revision
    answered_from_sent_ms: list[float]  # A's request sent to B's answer
    enforced_ms: list[float]  # A's 2xx to both workers of the gateway polling B enforcing
    gateway_load_s: float
    one: Writes  # 8 writers on A alone
    two: Writes  # 4 on A and 4 on B


def long_poll(cp: live.ControlPlane, held: int) -> http.client.HTTPConnection:
    """Sends B a gateway's long poll for a revision newer than `held`; the answer is read by
    `answer`."""
    connection = http.client.HTTPConnection("127.0.0.1", cp.port, timeout=LONG_POLL_S + 30)
    connection.request("GET", f"/v1/snapshot?since={held}&wait={LONG_POLL_S}", headers={"authorization": f"Bearer {live.SECRETS['TOLLGATE_GATEWAY_TOKEN']}"})
    return connection


def waiting_long_polls(cp: live.ControlPlane) -> int:
    status, body = e.http_get(f"{cp.url}/metrics", {"authorization": f"Bearer {live.SECRETS['TOLLGATE_ADMIN_TOKEN']}"})
    match = WAITING.search(body.decode(errors="replace")) if status == 200 else None
    return int(match[1]) if match else 0


def propagation(bench: Bench, a: Catalogue, cluster_url: str) -> Propagation:
    n = a.n
    b = live.ControlPlane(bench, f"replicas-postgresql-{n}-b", database=cluster_url)
    start_checked(b)
    expect(b.revision() == a.cp.revision(), f"replica B opened at revision {b.revision()}, A is at {a.cp.revision()}")
    upstream = live.upstream(bench)
    gateway = live.gateway(bench, b.url, f"replicas-{n}-gateway", upstream.ports["upstream"], WORKERS, cpus=None)
    started = time.monotonic()
    gateway.start(bench.supervisor, bench.envoy_binary)
    # A bulk key enforced through replica B: the whole catalogue came from it.
    wait_until(lambda: scale.enforced(gateway, bulk.api_key(0), 200), LOAD_DEADLINE_S, f"the {n:,}-key catalogue through replica B", interval_s=0.05)
    gateway_load_s = time.monotonic() - started
    connections = live.worker_connections(gateway, WORKERS)
    client = bulk.client_id(n + max(WRITER_COUNTS))
    key = bulk.api_key(n + max(WRITER_COUNTS))
    bench.log(f"replicas {n:,}: replica B on {b.port}, gateway enforcing through it {gateway_load_s:.1f}s after its exec")

    def wait_all(expected: int, since: float) -> float:
        seen: set[int] = set()
        while len(seen) < len(connections):
            for worker, connection in enumerate(connections):
                if worker not in seen and live.status_of(connection, PATH, key) == expected:
                    seen.add(worker)
            if time.monotonic() - since > CHANGE_DEADLINE_S:
                raise RuntimeError(f"replicas: not every worker answers {expected} {CHANGE_DEADLINE_S:.0f} s after the change")
        return (time.monotonic() - since) * 1000

    wait_all(403, time.monotonic())
    changes = 10 if bench.quick else 120
    result = Propagation(n, changes, [], [], [], [], gateway_load_s, Writes(), Writes())
    contract_id = 0
    for change in range(changes):
        # A random phase against the workers' 20 ms refresh tick, as in part 3.
        time.sleep(random.uniform(0, 0.025))
        held = b.revision()
        # The gateway's own poller and ours, both held by B before the write is sent.
        poll = long_poll(b, held)
        wait_until(lambda: waiting_long_polls(b) >= 2, 10.0, "replica B to hold both long polls", interval_s=0.002)
        answer: list[tuple[float, int, int]] = []

        def read_answer(connection: http.client.HTTPConnection = poll) -> None:
            response = connection.getresponse()
            response.read()
            answer.append((time.monotonic(), response.status, int((response.getheader("etag") or '"0"').strip('W/"'))))

        reader = threading.Thread(target=read_answer)
        reader.start()
        sent = time.monotonic()
        creating = change % 2 == 0
        if creating:
            contract_id = a.cp.contract(ORG, client, API, PLAN)
        else:
            a.cp.delete_contract(ORG, client, contract_id)
        acknowledged = time.monotonic()
        enforced = wait_all(200 if creating else 403, acknowledged)
        reader.join(timeout=LONG_POLL_S + 30)
        poll.close()
        expect(bool(answer) and answer[0][1] == 200 and answer[0][2] > held, f"replica B's long poll answered {answer} (held {held})")
        result.write_ms.append((acknowledged - sent) * 1000)
        result.answered_ms.append((answer[0][0] - acknowledged) * 1000)
        result.answered_from_sent_ms.append((answer[0][0] - sent) * 1000)
        result.enforced_ms.append(enforced)
    for connection in connections:
        connection.close()
    scale.stop_gateway(bench, gateway)
    scale.stop_gateway(bench, upstream)

    seconds = 2.0 if bench.quick else 8.0
    rounds = 1 if bench.quick else 2
    for r in range(rounds):
        for planes, total in (([a.cp], result.one), ([a.cp, b], result.two)) if r % 2 == 0 else (([a.cp, b], result.two), ([a.cp], result.one)):
            run = write_storm(planes, max(WRITER_COUNTS), n, seconds)
            total.ms += run.ms
            total.seconds += run.seconds
    bench.log(
        f"replicas {n:,}: B answered p50 {percentile(result.answered_ms, 50):.1f} / p99 {percentile(result.answered_ms, 99):.1f} ms after A's 2xx, "
        f"gateway on B enforcing p99 {percentile(result.enforced_ms, 99):.1f} ms; 8 writers on A {result.one.rate:.0f}/s, "
        f"4 + 4 on A and B {result.two.rate:.0f}/s"
    )
    b.stop()
    return result


def run(bench: Bench) -> SectionReport:
    sizes = [1_000] if bench.quick else [1_000, 100_000, 1_000_000]
    rounds = 1 if bench.quick else 3
    seconds = 1.5 if bench.quick else 6.0
    cluster = postgres.Cluster(bench).start()
    try:
        version = cluster.version()
        measured: list[list[Catalogue]] = []
        for n in sizes:
            pair = [catalogue(bench, n, None), catalogue(bench, n, cluster)]
            measure_writes(bench, pair, rounds, seconds, cluster)
            measured.append(pair)
            if n != sizes[-1]:
                for c in pair:
                    c.cp.stop()
        sqlite_cp = measured[-1][0].cp
        sqlite_cp.stop()
        pg = measured[-1][1]
        statements = {w: count_statements(bench, cluster, pg, w, 0.5 if bench.quick else 2.0) for w in WRITER_COUNTS}
        assert pg.cp.database_url is not None
        spread = propagation(bench, pg, pg.cp.database_url)
        pg.cp.stop()
    finally:
        cluster.stop()
    return report(bench, version, measured, spread, statements, rounds, seconds)


def row_stats(w: Writes) -> list[str]:
    return [f"{len(w.ms):,}", f"{w.rate:.0f}", f"{percentile(w.ms, 50):.1f}", f"{percentile(w.ms, 99):.1f}", f"{max(w.ms):.1f}"]


def report(bench: Bench, version: str, measured: list[list[Catalogue]], p: Propagation, statements: dict[int, Statements], rounds: int, seconds: float) -> SectionReport:
    build = "debug" if bench.quick else "release"
    digest = hashlib.sha256(live.tollgate_binary(bench).read_bytes()).hexdigest()[:12]
    open_rows = [
        [f"{c.n:,}", c.backend, f"{c.insert_s:.1f}", f"{c.open_s:.2f}", "–" if c.build_ms is None else f"{c.build_ms:,}", f"{c.reopen_s:.2f}", mib(c.rss)]
        for pair in measured
        for c in pair
    ]
    write_rows = []
    for pair in measured:
        for writers in WRITER_COUNTS:
            sqlite, pg = (c.writes[writers] for c in pair)
            for c in pair:
                w = c.writes[writers]
                ratio = "" if c.backend == "SQLite" else f" (×{percentile(pg.ms, 99) / percentile(sqlite.ms, 99):.2f} p99, ×{pg.rate / sqlite.rate:.2f} writes/s)"
                write_rows.append([f"{c.n:,}", f"{c.backend}{ratio}", f"{writers}", *row_stats(w)])
    wal_rows = []
    for pair in measured:
        pg_cat = pair[1]
        for writers in WRITER_COUNTS:
            wal, count = pg_cat.wal.get(writers, {}), len(pg_cat.writes[writers].ms)
            syncs = wal.get("wal_sync", 0.0)
            wal_rows.append(
                [
                    f"{pg_cat.n:,}", f"{writers}", f"{syncs / count:.2f}", f"{wal.get('wal_sync_time', 0.0) / syncs:.2f}" if syncs else "–",
                    f"{wal.get('wal_sync_time', 0.0) / count:.2f}", f"{wal.get('wal_bytes', 0.0) / count / 1024:.1f}",
                ]
            )
    large_sqlite, large_pg = measured[-1]
    n = large_pg.n
    top = max(WRITER_COUNTS)
    lo = min(WRITER_COUNTS)

    def verdict(ok: bool, by: str) -> str:
        return "met" if ok else f"missed by {by}"

    pg_p99 = percentile(large_pg.writes[lo].ms, 99)
    pg_rate = large_pg.writes[top].rate
    answered_p99 = percentile(p.answered_ms, 99)
    enforced_p99 = percentile(p.enforced_ms, 99)
    headlines = [
        f"Replicas, writes at {n:,} keys+contracts (a contract created or deleted through the HTTP API, side by side): "
        f"PostgreSQL 1 writer p50 {percentile(large_pg.writes[lo].ms, 50):.1f} / p99 {pg_p99:.1f} ms (part 4's goal ≤ {GOAL_WRITE_P99_MS:.0f}: "
        f"{verdict(pg_p99 <= GOAL_WRITE_P99_MS, f'{pg_p99 - GOAL_WRITE_P99_MS:.1f} ms')}), {top} writers {pg_rate:.0f} writes/s (goal ≥ {GOAL_WRITES_PER_S:.0f}: "
        f"{verdict(pg_rate >= GOAL_WRITES_PER_S, f'{GOAL_WRITES_PER_S - pg_rate:.0f}/s')}) p99 {percentile(large_pg.writes[top].ms, 99):.1f} ms; "
        f"SQLite 1 writer p50 {percentile(large_sqlite.writes[lo].ms, 50):.1f} / p99 {percentile(large_sqlite.writes[lo].ms, 99):.1f} ms, "
        f"{top} writers {large_sqlite.writes[top].rate:.0f} writes/s p99 {percentile(large_sqlite.writes[top].ms, 99):.1f} ms.",
        f"Replicas, propagation at {n:,} keys over {p.changes} changes: a write acknowledged by replica A answers replica B's long poll "
        f"{percentile(p.answered_ms, 50):.1f} ms (p50) / {answered_p99:.1f} ms (p99) after A's 2xx; both workers of a gateway polling B "
        f"enforce it {percentile(p.enforced_ms, 50):.0f} / {enforced_p99:.0f} ms after (goal p99 ≤ {GOAL_PROPAGATION_P99_MS:.0f}: "
        f"{verdict(enforced_p99 <= GOAL_PROPAGATION_P99_MS, f'{enforced_p99 - GOAL_PROPAGATION_P99_MS:.0f} ms')}); {top} writers on A "
        f"{p.one.rate:.0f} writes/s, {top // 2} on A + {top // 2} on B {p.two.rate:.0f} writes/s.",
    ]

    def prop_row(label: str, ms: list[float]) -> list[str]:
        return [label, f"{len(ms)}", f"{percentile(ms, 50):.1f}", f"{percentile(ms, 99):.1f}", f"{min(ms):.1f}", f"{max(ms):.1f}"]

    parts = [
        f"The real `tollgate serve` ({build} build, sha256 {digest}…) on SQLite (its file in the data directory, "
        f"`synchronous=FULL`) and on PostgreSQL {version} (a private cluster on loopback, on the same disk, with "
        "PostgreSQL's shipped durability: `fsync`, `synchronous_commit` and `full_page_writes` on; "
        "`bench/tollgate_bench/postgres.py`), each on the same catalogue as part 4's: N client versions with one key and "
        f"one contract, plus {SPARE} with a key and no contract, written in bulk (SQLite: one transaction; PostgreSQL: one "
        "transaction of `COPY … FROM STDIN` through `psql`, the schema's triggers and generated columns doing their part; "
        "`bench/tollgate_bench/bulk.py`). Every control plane was checked to open at the bulk write's revision, to read a "
        "bulk client's contract back through `/v1`, and to carry a bulk key in the delta of its first write. Writes are measured once the background consistency "
        "check that every start runs (every stored bucket rendered again) has ended, on every control plane.",
        "",
        "### Opening the bulk catalogue",
        "",
        table(["keys", "backend", "bulk insert s", "first open s", "its build ms", "open s", "RSS MiB after the writes"], open_rows),
        "",
        "*first open* is the exec to `/healthz` on the catalogue just filled in bulk (the stored snapshot buckets are built "
        "from the tables: *its build ms*, from the control plane's log); *open* is the next start.",
        "",
        "### Writes through the HTTP API, both backends side by side",
        "",
        table(["keys", "backend", "writers", "writes", "writes/s", "p50 ms", "p99 ms", "max ms"], write_rows),
        "",
        f"Each writer creates a contract for a client version of its own, then deletes it, back to back (each a "
        f"gateway-visible write: a new revision), request to 2xx, each request on a new connection (`urllib`) as a management "
        f"client makes it; {rounds} interleaved round(s) of {seconds:.1f} s per writer count and backend, the backends' order "
        "flipped every round. The ratios in the backend column are PostgreSQL's p99 and writes/s over SQLite's at the same "
        "N and writer count. Nearest-rank percentiles.",
        "",
        "### PostgreSQL's side of those writes",
        "",
        table(["keys", "writers", "WAL fsyncs per write", "ms per fsync", "fsync ms per write", "WAL KiB per write"], wal_rows),
        "",
        "From `pg_stat_wal` (`track_wal_io_timing` on) across each writer count's runs above: *fsyncs* are the WAL "
        "flushes commits wait for (`wal_sync`), *ms per fsync* their mean time (`wal_sync_time`).",
        "",
        table(
            ["writers", "writes", "statements per write: write connection", "other connections"],
            [[f"{w}", f"{x.writes}", f"{x.write_connection / x.writes:.1f}", f"{x.others / x.writes:.1f}"] for w, x in statements.items()],
        ),
        "",
        f"At {n:,} keys, after those runs, each writer count again for a moment with every statement PostgreSQL executed "
        "logged (`log_statement = all`; not timed, logging costs), counted per server process: the *write connection* is the "
        "one that took the revision row's lock, where each statement is one request and answer between the control plane "
        "and PostgreSQL (the client is synchronous and keeps its statements prepared); *other connections* are the "
        "replica's readers and its follower, whatever they ran meanwhile.",
        "",
        f"### Across replicas at {n:,} keys (PostgreSQL)",
        "",
        table(
            ["from", "changes", "p50 ms", "p99 ms", "min ms", "max ms"],
            [
                prop_row("replica A: a contract created or deleted, request to 2xx", p.write_ms),
                prop_row("A's 2xx to replica B answering a held long poll with the new revision", p.answered_ms),
                prop_row("A's request sent to B's answer", p.answered_from_sent_ms),
                prop_row(f"A's 2xx to both workers of a {WORKERS}-worker gateway polling B enforcing", p.enforced_ms),
            ],
        ),
        "",
        table(
            ["writers", "writes", "writes/s", "p50 ms", "p99 ms", "max ms"],
            [[f"{top} on replica A", *row_stats(p.one)], [f"{top // 2} on A + {top // 2} on B", *row_stats(p.two)]],
        ),
        "",
        f"Replica B is a second `tollgate serve --database` on the same database (its own data directory, the same secrets); "
        f"an Envoy `--concurrency {WORKERS}` from `tollgate envoy-config --control-plane <B>` loaded the whole catalogue from "
        f"it ({p.gateway_load_s:.1f} s from its exec to a bulk key's first 200). For each change the bench first sends B "
        f"`GET /v1/snapshot?since=<B's revision>&wait={LONG_POLL_S}` with the gateway token and waits until B's "
        "`snapshot_long_polls_waiting` shows it and the gateway's own poller held, then writes through A (a random 0–25 ms "
        "pause first, against the workers' 20 ms refresh tick), and polls the gateway over one kept-alive connection per "
        "worker until both answer the new way. B learns of A's commit from PostgreSQL's `pg_notify`, delivered at commit, "
        "before A has answered: B can answer before A's 2xx reaches the bench (a negative *A's 2xx to B* sample). The writer "
        "rows compare, in interleaved rounds, 8 writers on A with 4 on A and 4 on B at once.",
    ]
    if NOTES.exists():
        parts += ["", NOTES.read_text().strip()]
    return SectionReport("6. Replicas on PostgreSQL (issue 14)", "\n".join(parts), headlines)
