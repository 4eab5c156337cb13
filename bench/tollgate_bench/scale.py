"""Issue 6 part 4 — scale.

Catalogues of N client versions, each with one key and one contract (1k, 100k and 1M; --quick:
1k and 10k), all on one private API through one plan with two limits. For each N:

- control plane: the real `tollgate serve` on a SQLite file the bench filled in bulk
  (bulk.py), at every N: seconds to first open it (it builds its stored snapshot buckets from
  the tables once) and to open it again (what every later start costs), seconds for one
  gateway-visible change through the HTTP API (a contract created) with its own milliseconds
  from its debug log, the delta a gateway holding the previous revision gets for that change,
  the snapshot's pages and bytes as a gateway fetches them, and the process's RSS;
- writes at the largest N (issue 12): contracts created and deleted one at a time (request to
  2xx, and 2xx to both workers of a loaded gateway enforcing), 8 writers at once (writes per
  second) while a reader times `/healthz` and a management GET;
- gateway: an Envoy with 2 workers from `tollgate envoy-config`: seconds from its exec to the
  first request enforced with a catalogue key (200), and its RSS once loaded, against the same
  gateway with an empty catalogue: (RSS − RSS empty) / N bytes per key;
- request cost at the largest N against the smallest: two 1-worker gateways pinned to the
  measured core, interleaved wrk rounds as in part 1, CPU µs per allowed request;
- a snapshot swap at the largest N: wrk against the 2-worker gateway while one contract is
  added through the real control plane (the gateway takes it as a delta), and while the
  control plane restarts on a catalogue changed while it was down (no older revision to cut a
  delta from: the gateway reloads every page, the worst case); max latency and any non-200
  or socket error, against a run of the same length without a change.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import bulk, live
from . import envoy as e
from .context import REPO, Bench
from .processes import CLOCK_TICKS_PER_S, wait_until
from .report import SectionReport, median, table
from .wrk import STATUSES, WrkResult, run_wrk

# Hand-written reading of what bounds the figures, appended to the measured tables.
NOTES = REPO / "bench" / "notes" / "scale.md"
ORG, API, PLAN, PREFIX = "acme", "orders", "gold", "/orders"
LIMITS = [(10**12, "day"), (10**12, "month")]  # never bind: every request is an allowed one
PATH = "/orders/item"
WORKERS = 2
LOAD_DEADLINE_S = 900.0
# Bulk clients with a key but no contract (bulk.SPARE): n, n+1, n+2 get one as the timed
# change, the swap's change and the full-reload change; n+3 the sequential writes; n+4… one per
# concurrent writer.
WRITERS = 8
SPARE = 4 + WRITERS
RENDERED = re.compile(r"snapshot revision rendered revision=(\d+) buckets=(\d+) records=(\d+) ms=(\d+)")
BUILT = re.compile(r"stored snapshot buckets built from the catalogue revision=(\d+) ms=(\d+)")
GOAL_WRITE_P99_MS = 20.0
GOAL_WRITES_PER_S = 200.0
GOAL_PROPAGATION_P99_MS = 200.0
GOAL_OPEN_S = 3.0
GOAL_RSS_MIB = 500.0
GOAL_READ_P99_MS = 10.0
COST_CONNECTIONS = 32
GOAL_BYTES_PER_KEY = 300
GOAL_COST_RATIO = 1.10
GOAL_SWAP_MAX_MS = 100.0
# The swap runs wrk in consecutive windows of this many seconds, so that the gateway taking a
# change is judged by the windows it happened in, not diluted in (or blamed for) a long run on
# a shared machine; the control plane's render before it takes tens of seconds at 1M.
SWAP_WINDOW_S = 5.0
QUIET_WINDOWS = 6


@dataclass
class Timing:
    """The control plane's own debug line for one revision (store/mod.rs `commit_revision`):
    the buckets the write re-rendered and the milliseconds of the snapshot side of the write
    (render, store, cut and check the delta, prune), or the one-off build at a first open."""

    revision: int
    buckets: int
    ms: int


@dataclass
class Source:
    """The real control plane serving catalogue N, and what it cost."""

    n: int
    cp: live.ControlPlane
    pages: int
    bytes: int
    insert_s: float = 0.0
    open_s: float = 0.0
    reopen_s: float = 0.0
    change_s: float = 0.0
    fetch_s: float = 0.0
    delta_bytes: int = 0
    delta_s: float = 0.0
    delta_records: int = 0
    delta_buckets: int = 0
    open_timing: Timing | None = None
    change_timing: Timing | None = None
    rss: int = 0

    @property
    def url(self) -> str:
        return self.cp.url

    def stop(self) -> None:
        self.cp.stop()


@dataclass
class Loaded:
    n: int
    source: Source
    ready_s: float
    enforced_s: float
    rss: int
    gateway: e.Envoy


def record_bytes(n: int) -> int:
    """The bytes of bulk key `n`'s record in its key-directory bucket (core/src/keydir.rs:
    digest, expiry, client, grant count; per grant its contract id, API, plan and limits)."""
    client, api, plan = f"{ORG}/{bulk.client_id(n)}/1", f"{ORG}/{API}/1", f"{ORG}/{PLAN}/1"
    return 32 + 8 + 2 + len(client) + 2 + 8 + 2 + len(api) + 2 + len(plan) + 1 + 9 * len(LIMITS)


def stop_gateway(bench: Bench, gateway: e.Envoy) -> None:
    if gateway.process is not None:
        bench.supervisor.stop(gateway.process)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def timings(cp: live.ControlPlane) -> dict[int, Timing]:
    """Every `snapshot revision rendered` debug line (and a first open's build) the control
    plane logged, by revision."""
    log = cp.log_path.read_text(errors="replace")
    found = {int(m[1]): Timing(int(m[1]), 65_536, int(m[2])) for m in BUILT.finditer(log)}
    found.update({int(m[1]): Timing(int(m[1]), int(m[2]), int(m[4])) for m in RENDERED.finditer(log)})
    return found


def real_source(bench: Bench, n: int) -> Source:
    """Catalogue N in the real control plane, opened and timed; with N = 0 the empty catalogue
    the baseline gateway loads (no spare clients, no change)."""
    cp = live.ControlPlane(bench, f"scale-cp-{n}", debug=True).start()
    cp.seed(ORG, PLAN, LIMITS, API, PREFIX)
    cp.stop()
    insert_s = bulk.insert_clients(cp.database, ORG, API, PLAN, n, spare=SPARE) if n else 0.0
    cp.start(deadline_s=LOAD_DEADLINE_S)
    source = Source(n, cp, 0, 0, insert_s=insert_s, open_s=cp.start_seconds)
    held = cp.revision()
    source.open_timing = timings(cp).get(held)
    if not n:
        return source
    # Every later start: the stored buckets are there.
    cp.stop()
    cp.start(deadline_s=LOAD_DEADLINE_S)
    source.reopen_s = cp.start_seconds
    # One gateway-visible change: a contract for spare client n (renders the snapshot again).
    started = time.monotonic()
    cp.contract(ORG, bulk.client_id(n), API, PLAN)
    source.change_s = time.monotonic() - started
    source.change_timing = timings(cp).get(cp.revision())
    # What a gateway holding the previous revision gets for it.
    started = time.monotonic()
    status, body = e.http_get(f"{cp.url}/v1/snapshot?since={held}", {"authorization": f"Bearer {live.SECRETS['TOLLGATE_GATEWAY_TOKEN']}"}, timeout_s=600)
    source.delta_s = time.monotonic() - started  # the first ask cuts it (then cached for every gateway)
    if status != 200:
        raise RuntimeError(f"control plane {cp.name}: ?since={held} answered {status}")
    delta = json.loads(body)
    source.delta_bytes = len(body)
    source.delta_records = sum(len(c.get("keys", [])) + len(c.get("subjects", [])) for c in delta.get("clients", []))
    source.delta_buckets = len(delta["buckets"]) if delta.get("buckets") is not None else 0
    source.pages, source.bytes, source.fetch_s = cp.snapshot_pages()
    assert cp.process is not None
    source.rss = rss_bytes(cp.process.pid)
    bench.log(
        f"scale {n:,}: control plane opened in {source.open_s:.1f}s, a contract took {source.change_s:.2f}s "
        f"(delta {source.delta_bytes:,} bytes, {source.delta_buckets} bucket(s)), {source.pages} page(s), {source.bytes:,} bytes, "
        f"RSS {mib(source.rss)} MiB"
    )
    return source


def enforced(envoy: e.Envoy, key: str, status: int) -> bool:
    try:
        return e.http_get(envoy.url(live.listener_name(envoy), PATH), {"x-api-key": key}, timeout_s=5)[0] == status
    except OSError:
        return False


def load_gateway(bench: Bench, n: int, source: Source, upstream_port: int, concurrency: int, cpus: str | None) -> Loaded:
    gateway = live.gateway(bench, source.url, f"scale-{n}-{concurrency}w", upstream_port, concurrency, cpus)
    started = time.monotonic()
    gateway.start(bench.supervisor, bench.envoy_binary)
    ready_s = time.monotonic() - started
    # Client 0's key: 200 once its bucket and the routes are in (401 with an empty catalogue).
    expected = 200 if n else 401
    wait_until(lambda: enforced(gateway, bulk.api_key(0), expected), LOAD_DEADLINE_S, f"the {n:,}-key catalogue to be enforced", interval_s=0.01)
    enforced_s = time.monotonic() - started
    # Resident memory once the poller and the workers are done with the load.
    time.sleep(1.0 if bench.quick else 3.0)
    return Loaded(n, source, ready_s, enforced_s, rss_bytes(gateway.pid), gateway)


def cpu_per_request(bench: Bench, gateway: e.Envoy, seconds: float) -> tuple[float, WrkResult]:
    before = gateway.cpu_ticks()
    result = run_wrk(
        gateway.url(live.listener_name(gateway), PATH),
        duration_s=seconds,
        connections=COST_CONNECTIONS,
        threads=1,
        headers={"x-api-key": bulk.api_key(0)},
        cpus=bench.cpus.load,
    )
    ticks = gateway.cpu_ticks() - before
    if result.non_2xx_3xx or not result.requests:
        raise RuntimeError(f"{gateway.name}: {result.non_2xx_3xx} of {result.requests} requests were not 200")
    return ticks / CLOCK_TICKS_PER_S * 1e6 / result.requests, result


@dataclass
class Window:
    """One wrk run of a series: its wall-clock span (monotonic seconds) and result."""

    start: float
    end: float
    result: WrkResult


@dataclass
class Swap:
    """A series of short wrk runs against the 2-worker gateway around an action (none for the
    quiet series), split into the windows before the action ended (the control plane
    rendering, or opening) and the windows from then on (the gateway taking the change)."""

    label: str
    before: list[Window]
    during: list[Window]
    done_at: float | None = None  # monotonic: the change's 2xx, or the restarted control plane's /healthz
    enforced_at: float | None = None  # monotonic: the first 200 for the new contract's key
    answers: dict[str, int] | None = None  # the control plane's snapshot answers over the series, by kind

    @property
    def enforced_s(self) -> float | None:
        return None if self.done_at is None or self.enforced_at is None else self.enforced_at - self.done_at

    def gap_s(self) -> float:
        """How much of [done_at, enforced_at] fell between two windows (no load running)."""
        if self.done_at is None or self.enforced_at is None:
            return 0.0
        lo, hi = self.done_at, self.enforced_at
        covered = sum(max(0.0, min(hi, w.end) - max(lo, w.start)) for w in self.during + self.before)
        return max(0.0, (hi - lo) - covered)


def window_seconds(bench: Bench) -> float:
    return 2.0 if bench.quick else SWAP_WINDOW_S


def summary(windows: list[Window]) -> dict[str, float]:
    rs = [w.result for w in windows]
    return {
        "windows": len(rs),
        "seconds": sum(r.duration_s for r in rs),
        "requests": sum(r.requests for r in rs),
        "non_200": sum(r.non_2xx_3xx for r in rs),
        "socket_errors": sum(r.socket_errors for r in rs),
        "p99_worst": max((r.p99_ms for r in rs), default=0.0),
        "max": max((r.max_ms for r in rs), default=0.0),
        "max_median": median([r.max_ms for r in rs]) if rs else 0.0,
    }


def under_load(bench: Bench, loaded: Loaded, label: str, act: Callable[[], None] | None, probe: int, quiet_windows: int) -> Swap:
    """Consecutive wrk runs of SWAP_WINDOW_S against the 2-worker gateway. Without `act`,
    `quiet_windows` of them. With `act` (run in a thread from the first window on), until the
    window after the one in which the probe key's 200 was first seen."""
    url = loaded.gateway.url(live.listener_name(loaded.gateway), PATH)
    window_s = window_seconds(bench)

    def window() -> Window:
        started = time.monotonic()
        result = run_wrk(url, duration_s=window_s, connections=COST_CONNECTIONS, threads=2, headers={"x-api-key": bulk.api_key(0)}, script=STATUSES)
        return Window(started, time.monotonic(), result)

    if act is None:
        return Swap(label, [], [window() for _ in range(quiet_windows)])
    done: list[float] = []
    seen: list[float] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def action() -> None:
        try:
            act()
            done.append(time.monotonic())
            # Then watch for the gateway enforcing it (bounded by LOAD_DEADLINE_S).
            end = time.monotonic() + LOAD_DEADLINE_S
            while not stop.is_set() and time.monotonic() < end:
                if enforced(loaded.gateway, bulk.api_key(probe), 200):
                    seen.append(time.monotonic())
                    return
                time.sleep(0.01)
        except BaseException as error:  # reported below, in the main thread
            errors.append(error)

    thread = threading.Thread(target=action)
    windows: list[Window] = []
    thread.start()
    try:
        for _ in range(int(2 * LOAD_DEADLINE_S / window_s)):
            windows.append(window())
            if errors:
                raise errors[0]
            if seen and windows[-1].start > seen[0]:
                break  # one whole window after the change was enforced
        else:
            raise RuntimeError(f"{label}: not enforced within {2 * LOAD_DEADLINE_S:.0f}s")
    finally:
        stop.set()
        thread.join(timeout=60)
    before = [w for w in windows if w.end <= done[0]]
    return Swap(label, before, [w for w in windows if w.end > done[0]], done[0], seen[0])


ANSWERS = re.compile(r'snapshot_responses_total\{outcome="(\w+)"\} (\d+)')


def snapshot_answers(cp: live.ControlPlane) -> dict[str, int]:
    """The control plane's `snapshot_responses` counters by outcome (full, woken, page, delta,
    not_modified): which kind of answer the gateway's poller got."""
    status, body = e.http_get(f"{cp.url}/metrics", {"authorization": f"Bearer {live.SECRETS['TOLLGATE_ADMIN_TOKEN']}"})
    if status != 200:
        return {}
    return {m[1]: int(m[2]) for m in ANSWERS.finditer(body.decode(errors="replace"))}


def answered(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in sorted(after.items()) if v - before.get(k, 0) and k != "not_modified"}


def swaps(bench: Bench, loaded: Loaded) -> list[Swap]:
    """The quiet series, a contract created through the running control plane (a delta for
    the gateway), and a full reload: the control plane restarted on a catalogue changed while
    it was stopped, so it retains no revision older than the one it opens at."""
    source, n = loaded.source, loaded.n
    quiet = under_load(bench, loaded, "no change", None, 0, 2 if bench.quick else QUIET_WINDOWS)

    def create() -> None:
        source.cp.contract(ORG, bulk.client_id(n + 1), API, PLAN)

    before = snapshot_answers(source.cp)
    delta = under_load(bench, loaded, "one contract created (delta)", create, n + 1, 0)
    delta.answers = answered(before, snapshot_answers(source.cp))
    source.cp.stop()
    bulk.insert_contract(source.cp.database, ORG, API, PLAN, n + 2)

    def reopen() -> None:
        source.cp.start(deadline_s=LOAD_DEADLINE_S)

    full = under_load(bench, loaded, "one contract, control plane restarted (full reload)", reopen, n + 2, 0)
    full.answers = answered({}, snapshot_answers(source.cp))  # a fresh process: counted since it opened
    return [quiet, delta, full]


@dataclass
class Writes:
    """Writes through the real HTTP API at the largest N."""

    n: int
    write_ms: list[float]  # one at a time: request sent to 2xx
    propagation_ms: list[float]  # one at a time: 2xx to both workers enforcing
    storm_writes: int
    storm_s: float
    storm_write_ms: list[float]
    read_ms: dict[str, list[float]]
    rss: int


def percentile(samples: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(samples)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


def writes(bench: Bench, loaded: Loaded) -> Writes:
    """Contracts created and deleted through the HTTP API on the loaded control plane: one at
    a time, each followed until both workers of the loaded gateway enforce it; then WRITERS at
    once, each on its own spare client, while a reader times what probes and dashboards ask."""
    cp, n = loaded.source.cp, loaded.n
    changes = 10 if bench.quick else 60
    connections = live.worker_connections(loaded.gateway, WORKERS)
    path = PATH

    def wait_all(key: str, expected: int, since: float) -> float:
        seen: set[int] = set()
        while len(seen) < len(connections):
            for worker, connection in enumerate(connections):
                if worker not in seen and live.status_of(connection, path, key) == expected:
                    seen.add(worker)
            if time.monotonic() - since > 30:
                raise RuntimeError(f"scale writes: not every worker answers {expected} 30 s after the change")
        return (time.monotonic() - since) * 1000

    key = bulk.api_key(n + 3)
    write_ms: list[float] = []
    propagation_ms: list[float] = []
    contract_id = 0
    for change in range(changes):
        creating = change % 2 == 0
        sent = time.monotonic()
        if creating:
            contract_id = cp.contract(ORG, bulk.client_id(n + 3), API, PLAN)
        else:
            cp.delete_contract(ORG, bulk.client_id(n + 3), contract_id)
        acknowledged = time.monotonic()
        write_ms.append((acknowledged - sent) * 1000)
        propagation_ms.append(wait_all(key, 200 if creating else 403, acknowledged))
    for connection in connections:
        connection.close()

    storm_s = 2.0 if bench.quick else 10.0
    stop = threading.Event()
    lock = threading.Lock()
    storm_write_ms: list[float] = []
    errors: list[BaseException] = []

    admin = {"authorization": f"Bearer {live.SECRETS['TOLLGATE_ADMIN_TOKEN']}"}
    reads = {"GET /healthz": "/healthz", f"GET /v1/orgs/{ORG}": f"/v1/orgs/{ORG}"}
    read_ms: dict[str, list[float]] = {what: [] for what in reads}

    def reader() -> None:
        try:
            while not stop.is_set():
                for what, path in reads.items():
                    started = time.monotonic()
                    status, _ = e.http_get(f"{cp.url}{path}", admin, timeout_s=30)
                    if status != 200:
                        raise RuntimeError(f"{what} answered {status} during the write storm")
                    read_ms[what].append((time.monotonic() - started) * 1000)
        except BaseException as error:
            errors.append(error)

    churn = (stop, storm_write_ms, lock, errors)
    threads = [
        threading.Thread(target=churn_contract, args=(cp, bulk.client_id(n + 4 + w), *churn)) for w in range(WRITERS)
    ] + [threading.Thread(target=reader)]
    started = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(storm_s)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    elapsed = time.monotonic() - started
    if errors:
        raise errors[0]
    assert cp.process is not None
    result = Writes(n, write_ms, propagation_ms, len(storm_write_ms), elapsed, storm_write_ms, read_ms, rss_bytes(cp.process.pid))
    bench.log(
        f"scale writes at {n:,}: one at a time p99 {percentile(write_ms, 99):.1f} ms, enforced p99 "
        f"{percentile(propagation_ms, 99):.1f} ms; {WRITERS} writers {result.storm_writes / elapsed:.0f} writes/s; "
        + ", ".join(f"{what} p99 {percentile(ms, 99):.1f} ms" for what, ms in read_ms.items())
    )
    return result


def churn_contract(
    cp: live.ControlPlane,
    client: str,
    stop: threading.Event,
    samples: list[float],
    lock: threading.Lock,
    errors: list[BaseException],
) -> None:
    """Creates and deletes a contract of `client` on `cp` back to back until `stop`, each
    write's milliseconds into `samples`; an error ends it, kept in `errors` for the caller."""
    try:
        while not stop.is_set():
            started = time.monotonic()
            made = cp.contract(ORG, client, API, PLAN)
            middle = time.monotonic()
            cp.delete_contract(ORG, client, made)
            ended = time.monotonic()
            with lock:
                samples.extend([(middle - started) * 1000, (ended - middle) * 1000])
    except BaseException as error:  # reported by the caller
        errors.append(error)


def mib(n: float) -> str:
    return f"{n / 2**20:,.1f}"


def run(bench: Bench) -> SectionReport:
    sizes = [1_000, 10_000] if bench.quick else [1_000, 100_000, 1_000_000]
    upstream = live.upstream(bench)
    port = upstream.ports["upstream"]

    empty = real_source(bench, 0)
    baseline = load_gateway(bench, 0, empty, port, WORKERS, None)
    stop_gateway(bench, baseline.gateway)
    empty.stop()
    bench.log(f"scale: empty catalogue, gateway RSS {mib(baseline.rss)} MiB")

    loaded: list[Loaded] = []
    for n in sizes:
        source = real_source(bench, n)
        result = load_gateway(bench, n, source, port, WORKERS, None)
        bench.log(f"scale {n:,}: enforced {result.enforced_s:.2f}s after Envoy's exec; RSS {mib(result.rss)} MiB")
        loaded.append(result)
        if n != sizes[-1]:
            stop_gateway(bench, result.gateway)
            if n != sizes[0]:
                source.stop()

    small, large = loaded[0], loaded[-1]
    written = writes(bench, large)

    # Request cost, largest against smallest catalogue: 1-worker gateways on the measured core.
    cost_gateways = [load_gateway(bench, x.n, x.source, port, 1, bench.cpus.envoy).gateway for x in (small, large)]
    warm = 1.0
    for g in cost_gateways:
        cpu_per_request(bench, g, warm)
    costs: list[list[float]] = [[], []]
    rps: list[list[float]] = [[], []]
    for r in range(bench.rounds):
        bench.log(f"scale cost round {r + 1}/{bench.rounds}")
        for i, g in enumerate(cost_gateways):
            cpu, result = cpu_per_request(bench, g, bench.round_seconds)
            costs[i].append(cpu)
            rps[i].append(result.requests_per_s)
    for g in cost_gateways:
        stop_gateway(bench, g)
    ratios = [b / a for a, b in zip(costs[0], costs[1])]
    cost_ratio = median(ratios)
    small.source.stop()

    runs = swaps(bench, large)
    for x in runs[1:]:
        bench.log(
            f"scale swap, {x.label}: max {summary(x.before)['max']:.0f} ms before the change ended, "
            f"{summary(x.during)['max']:.0f} ms from then on; enforced {x.enforced_s:.2f}s after it ended"
        )
    rss_after_swap = rss_bytes(large.gateway.pid)
    large.source.stop()

    return report(bench, baseline, loaded, costs, rps, cost_ratio, runs, rss_after_swap, written)


def ms(t: Timing | None) -> str:
    return "–" if t is None else f"{t.ms:,} ({t.buckets:,})"


def report(
    bench: Bench,
    baseline: Loaded,
    loaded: list[Loaded],
    costs: list[list[float]],
    rps: list[list[float]],
    cost_ratio: float,
    runs: list[Swap],
    rss_after_swap: int,
    written: Writes,
) -> SectionReport:
    binary = live.tollgate_binary(bench)
    build = "debug" if bench.quick else "release"
    digest = hashlib.sha256(binary.read_bytes()).hexdigest()[:12]
    built = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(binary.stat().st_mtime))
    rows_cp = []
    for x in loaded:
        s = x.source
        rows_cp.append(
            [
                f"{x.n:,}", f"{s.insert_s:.1f}", f"{s.open_s:.2f}", ms(s.open_timing), f"{s.reopen_s:.2f}", f"{s.change_s * 1000:.1f}", ms(s.change_timing),
                f"{s.pages}", mib(s.bytes), f"{s.fetch_s:.2f}", f"{s.delta_bytes:,}", f"{s.delta_buckets} / {s.delta_records}", f"{s.delta_s:.2f}", mib(s.rss),
            ]
        )
    rows_gw = [["0 (empty)", f"{baseline.ready_s:.2f}", f"{baseline.enforced_s:.2f}", mib(baseline.rss), "–", "–"]]
    for x in loaded:
        growth = x.rss - baseline.rss
        rows_gw.append([f"{x.n:,}", f"{x.ready_s:.2f}", f"{x.enforced_s:.2f}", mib(x.rss), mib(growth), f"{growth / x.n:,.0f}"])
    small, large = loaded[0], loaded[-1]
    per_key = (large.rss - baseline.rss) / large.n
    quiet, delta, full = runs
    sq, sd, sf = summary(quiet.during), summary(delta.during), summary(full.during)

    def failed(x: dict[str, float]) -> int:
        return int(x["non_200"] + x["socket_errors"])

    def verdict(ok: bool, by: str) -> str:
        return "met" if ok else f"missed by {by}"

    def swap_verdict(x: dict[str, float]) -> str:
        ok = failed(x) == 0 and x["max"] <= GOAL_SWAP_MAX_MS
        by = f"{x['max'] - GOAL_SWAP_MAX_MS:.0f} ms" if failed(x) == 0 else f"{failed(x)} failed requests"
        return verdict(ok, by)

    lc = large.source
    w = written
    write_p99, propagation_p99 = percentile(w.write_ms, 99), percentile(w.propagation_ms, 99)
    rate = w.storm_writes / w.storm_s
    read_p99 = max(percentile(v, 99) for v in w.read_ms.values())
    rss_mib = lc.rss / 2**20
    headlines = [
        f"Scale, control plane (real `tollgate serve`) at {large.n:,} keys+contracts: a contract created or deleted in "
        f"{percentile(w.write_ms, 50):.1f} ms p50 / {write_p99:.1f} ms p99 (goal ≤ {GOAL_WRITE_P99_MS:.0f}: "
        f"{verdict(write_p99 <= GOAL_WRITE_P99_MS, f'{write_p99 - GOAL_WRITE_P99_MS:.1f} ms')}); {WRITERS} writers at once "
        f"{rate:.0f} writes/s (goal ≥ {GOAL_WRITES_PER_S:.0f}: {verdict(rate >= GOAL_WRITES_PER_S, f'{GOAL_WRITES_PER_S - rate:.0f}/s')}); "
        f"2xx to both workers enforcing {percentile(w.propagation_ms, 50):.0f} ms p50 / {propagation_p99:.0f} ms p99 (goal ≤ "
        f"{GOAL_PROPAGATION_P99_MS:.0f}: {verdict(propagation_p99 <= GOAL_PROPAGATION_P99_MS, f'{propagation_p99 - GOAL_PROPAGATION_P99_MS:.0f} ms')}); "
        f"reads during the writes p99 {read_p99:.1f} ms (goal ≤ {GOAL_READ_P99_MS:.0f}: {verdict(read_p99 <= GOAL_READ_P99_MS, f'{read_p99 - GOAL_READ_P99_MS:.1f} ms')}); "
        f"opens in {lc.reopen_s:.2f} s (goal ≤ {GOAL_OPEN_S:.0f}: {verdict(lc.reopen_s <= GOAL_OPEN_S, f'{lc.reopen_s - GOAL_OPEN_S:.2f} s')}; "
        f"the first open after a bulk import builds the stored buckets: {lc.open_s:.1f} s) and holds it in {rss_mib:.0f} MiB RSS "
        f"(goal ≤ {GOAL_RSS_MIB:.0f}: {verdict(rss_mib <= GOAL_RSS_MIB, f'{rss_mib - GOAL_RSS_MIB:.0f} MiB')}); "
        f"{lc.pages} pages, {mib(lc.bytes)} MiB, fetched whole in {lc.fetch_s:.1f} s.",
        f"Scale, memory: {large.n:,} keys+contracts grow the 2-worker Envoy by {per_key:,.0f} bytes per key "
        f"(goal ≤ {GOAL_BYTES_PER_KEY}: {verdict(per_key <= GOAL_BYTES_PER_KEY, f'{per_key - GOAL_BYTES_PER_KEY:,.0f} bytes')}).",
        f"Scale, request cost: {median(costs[1]):.1f} µs CPU per allowed request at {large.n:,} keys vs {median(costs[0]):.1f} µs at "
        f"{small.n:,} (×{cost_ratio:.2f} paired; goal ≤ ×{GOAL_COST_RATIO:.2f}: "
        f"{verdict(cost_ratio <= GOAL_COST_RATIO, f'{100 * (cost_ratio - GOAL_COST_RATIO):.0f} %')}).",
        f"Scale, swap at {large.n:,} keys through the real control plane, wrk in {window_seconds(bench):.0f}-s windows: taking one "
        f"contract as a delta, max latency {sd['max']:.0f} ms in the windows from the 2xx on, {failed(sd)} request(s) failed, enforced "
        f"{delta.enforced_s:.2f} s after the 2xx (goal: none dropped or delayed > {GOAL_SWAP_MAX_MS:.0f} ms: {swap_verdict(sd)}); "
        f"a full reload of every page, max {sf['max']:.0f} ms, {failed(sf)} failed ({swap_verdict(sf)}); "
        f"without any change the worst window had {sq['max']:.0f} ms (median window {sq['max_median']:.0f} ms).",
    ]
    swap_rows = []

    def swap_row(label: str, x: dict[str, float], enforced_s: str, answers: str) -> list[str]:
        return [
            label, f"{x['windows']:.0f} / {x['seconds']:.0f}", f"{x['requests']:,.0f}", f"{x['non_200']:,.0f}", f"{x['socket_errors']:,.0f}",
            f"{x['p99_worst']:.1f}", f"{x['max_median']:.1f}", f"{x['max']:.1f}", enforced_s, answers,
        ]

    swap_rows.append(swap_row("no change", sq, "–", "–"))
    for x, what in ((delta, "the control plane rendering the change"), (full, "the control plane down, then opening")):
        answers = "–" if x.answers is None else (", ".join(f"{k} {v}" for k, v in x.answers.items()) or "none")
        if x.before:
            swap_rows.append(swap_row(f"{x.label}: {what}", summary(x.before), "–", "–"))
        swap_rows.append(swap_row(f"{x.label}: from its end on (the gateway takes it)", summary(x.during), f"{x.enforced_s:.2f}", answers))
    gaps = max(delta.gap_s(), full.gap_s())
    parts = [
        f"Catalogues of N client versions, each with one key and one contract on one private API through a plan "
        f"with two limits (never reached), plus {SPARE} client versions with a key and no contract, which get one as the "
        f"timed changes. At every N the control plane is the real `tollgate serve` ({build} build, sha256 {digest}…, "
        f"built {built}, copied at the start of the run) on a SQLite file the bench filled in one transaction with the rows "
        "its store writes (`bench/tollgate_bench/bulk.py`), run with `RUST_LOG=tollgate_control_plane=debug`; gateways are "
        "Envoys from `tollgate envoy-config`.",
        "",
        "### Control plane",
        "",
        table(
            [
                "keys", "bulk insert s", "first open s", "its build ms", "open s", "one contract ms", "its snapshot ms (buckets)",
                "pages", "snapshot MiB", "fetch all pages s", "delta bytes", "delta buckets / records", "delta s", "RSS MiB",
            ],
            rows_cp,
        ),
        "",
        "*first open* is `tollgate serve`'s exec to `/healthz` on the file just filled in bulk: the stored snapshot buckets "
        "do not describe it yet, so it builds them from the tables once (*its build ms*, from its log); *open* is the next "
        "start, what every start of a catalogue the control plane wrote costs (it reads only what the stored buckets say of "
        "themselves; the background consistency check runs after it listens). *one contract* is one contract created "
        "through the HTTP API, request to 2xx; *its snapshot ms (buckets)* is the snapshot side of that write from the "
        "control plane's `snapshot revision rendered` debug line (`control-plane/src/store/mod.rs` `commit_revision`: "
        "re-render the key-directory buckets the write touched, store them, cut the delta and run it through core's "
        "acceptance check, prune). *delta* is the answer to `GET /v1/snapshot?since=<the revision before the contract>`, "
        "what a gateway holding that revision fetches: the changed buckets with their records (cut by the write). *fetch "
        "all pages* is a new gateway's full fetch, each page assembled from the stored buckets as of its revision. *RSS* "
        "is the control plane's after the change and the full fetch.",
        "",
        f"### Writes at {w.n:,} keys, through the HTTP API",
        "",
        table(
            ["what", "samples", "p50 ms", "p99 ms", "max ms"],
            [
                ["a contract created or deleted, one at a time: request to 2xx", f"{len(w.write_ms)}",
                 f"{percentile(w.write_ms, 50):.1f}", f"{write_p99:.1f}", f"{max(w.write_ms):.1f}"],
                [f"the same: 2xx to both workers of the {WORKERS}-worker gateway enforcing", f"{len(w.propagation_ms)}",
                 f"{percentile(w.propagation_ms, 50):.1f}", f"{propagation_p99:.1f}", f"{max(w.propagation_ms):.1f}"],
                [f"{WRITERS} writers at once for {w.storm_s:.0f} s: request to 2xx ({rate:.0f} writes/s)", f"{w.storm_writes}",
                 f"{percentile(w.storm_write_ms, 50):.1f}", f"{percentile(w.storm_write_ms, 99):.1f}", f"{max(w.storm_write_ms):.1f}"],
            ]
            + [
                [f"{what} during those writes (admin token)", f"{len(v)}", f"{percentile(v, 50):.1f}", f"{percentile(v, 99):.1f}", f"{max(v):.1f}"]
                for what, v in w.read_ms.items()
            ],
        ),
        "",
        f"One client version with a key (spare client {w.n + 3:,}) gets a contract, which is then deleted, "
        f"{len(w.write_ms)} times one after the other; after each 2xx the bench polls the gateway over one kept-alive "
        f"connection per worker until both answer the new way (200, then 403). Then {WRITERS} threads each create and "
        "delete a contract of their own spare client back to back while one more thread asks `/healthz` and the org in "
        f"turn. The control plane's RSS after all this: {mib(w.rss)} MiB. Nearest-rank percentiles.",
        "",
        f"### Gateway: load time and memory (Envoy `--concurrency {WORKERS}`)",
        "",
        table(["keys", "Envoy ready s", "first request enforced s", "RSS MiB", "growth MiB", "bytes per key"], rows_gw),
        "",
        "Times from Envoy's exec; *first request enforced* is the first 200 for a catalogue key (the poller "
        "publishes the routing table after the last page, so this is the whole catalogue in shared data). RSS "
        "is `VmRSS` 3 s after that (1 s with --quick); growth is against the same gateway with an empty catalogue. "
        f"After the swaps below the {large.n:,}-key gateway's RSS was {mib(rss_after_swap)} MiB. "
        f"The key directory's own payload is {record_bytes(0)} bytes per key (the encoded record in its bucket): "
        "the part of the growth that any design keeping these records in shared data pays.",
        "",
        "### Request cost at the largest catalogue",
        "",
        table(
            ["keys", "CPU µs/req (median)", "CPU range", "req/s (median)"],
            [
                [f"{x.n:,}", f"{median(c):.1f}", f"{min(c):.1f}–{max(c):.1f}", f"{median(r):,.0f}"]
                for x, c, r in zip((small, large), costs, rps)
            ],
        ),
        "",
        f"Two 1-worker gateways on the measured core, wrk `-t1 -c{COST_CONNECTIONS}` on the other, "
        f"{len(costs[0])} interleaved round(s) of {bench.round_seconds:.0f} s, the same key route to the same "
        f"upstream; paired ratio (median of per-round ratios) ×{cost_ratio:.2f}.",
        "",
        f"### Snapshot swap at {large.n:,} keys, through the real control plane",
        "",
        table(
            ["run", "windows / s", "requests", "non-200", "socket errors", "p99 ms (worst window)", "max ms (median window)", "max ms", "enforced after s", "control plane answered"],
            swap_rows,
        ),
        "",
        f"wrk `-t2 -c{COST_CONNECTIONS}` against the 2-worker gateway (not pinned; the control plane shares the 2 cores), "
        f"in consecutive runs of {window_seconds(bench):.0f} s (*windows*), so that a stall is seen in the window it happened in "
        "rather than averaged into, or blamed on, a long run on a shared machine. *no change*: "
        f"{sq['windows']:.0f} windows, the noise floor. *one contract created (delta)*: created through the running control "
        "plane's HTTP API from the first window on; the gateway's poller, long-polling with `?since=<held revision>`, gets "
        "only the changed buckets. *control plane restarted (full reload)*: the control plane is stopped, one contract is "
        "written into its SQLite file with the revision bumped (as a committed write leaves them), and it is started again; "
        "it retains no revision older than the one it opens at, so the gateway fetches, verifies and publishes every page: "
        "the worst case for a gateway (also a gateway that missed more than the retained revisions, or a change larger than "
        "a page). Each change is split into the windows that ended before it ended (the control plane rendering the write, "
        "or opening, on the same 2 cores) and the windows from then on, up to one whole window after the gateway enforced "
        "it; the goal is judged on the latter. *enforced after* is from the change's end (its 2xx, or the restarted "
        "control plane's `/healthz`) to the first 200 for the new contract's key (the full reload includes the poller's "
        "retry backoff, up to 10 s, from while the control plane was down). *control plane answered* is its "
        "`snapshot_responses` counters over the series (`delta`: a `?since=` delta; `full` and `page`: a whole revision, "
        "its first page and the rest): what the gateway fetched. Between two windows wrk restarts (tens of ms without "
        f"load): {gaps * 1000:.0f} ms of the span from a change's end to its enforcement fell in such a gap.",
    ]
    parts += ["", NOTES.read_text().strip()]
    return SectionReport("4. Scale", "\n".join(parts), headlines)
