"""Issue 13's goals — fleet-wide counting through the control plane's broker and Redis.

One run starts a `redis-server` on a loopback port (no persistence), a control plane with
`--redis` (the fleet) and one without (per-process counting), then measures:

1. Exactness: 3 Envoys × 2 workers from `tollgate envoy-config` (live mode, the fleet control
   plane), one per-second and one per-minute contract hammered through all of them at once by
   keep-alive client threads that keep every answer's send and receive times; admitted vs L per
   exhausted window (a window that refused at least once), beside each window's count in Redis.
2. Allow-path cost with a held grant: the production bootstrap (`production.py`, direct
   response route) on one pinned Envoy `--concurrency 1` against the fleet control plane and the
   same against the per-process one, a plan that never binds, wrk in interleaved rounds.
3. Broker calls per admitted request: the fleet Envoy's `tollgate_fleet_grants_total` over the
   rounds of 2 (a contract well above 1,000 req/s), over a contract of 5,000 a second through
   that Envoy, and over the hammering of 1.
4. Latency of requests that waited for a grant: client threads on keep-alive connections, each
   request's latency, on a contract whose per-second grant runs out many times a second, fleet
   and per-process in interleaved rounds.
5. Broker + Redis throughput: wrk POSTs lease requests to the fleet control plane (pinned to one
   core) at the grant size seen in 1; control plane and Redis CPU per grant.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass

from . import envoy as e
from . import live, production
from .catalogue import NEVER_BINDS
from .context import REPO, Bench
from .processes import CLOCK_TICKS_PER_S, cpu_ticks, wait_until
from .report import SectionReport, median, table
from .wrk import LEASE, STATUSES, run_wrk

ORG = "fleet"
API_PREFIX = "/orders"
PATH = production.ROUTES["direct_response"]
GATEWAYS, WORKERS = 3, 2
PER_SECOND, PER_MINUTE = 300, 6_000  # the exactness contracts' L
TIGHT = 100  # per second: the latency contract, whose grant runs out often
BUSY = 5_000  # per second: part 3's contract whose window (and so its grants) restarts each second
PLANS = {
    "busy": ((BUSY, "second"),),
    "gold": ((NEVER_BINDS, "day"),),
    "per-second": ((PER_SECOND, "second"),),
    "per-minute": ((PER_MINUTE, "minute"),),
    "tight": ((TIGHT, "second"),),
}
CONNECTIONS = 16  # wrk -c for part 2, as production.py
WARMUP_S = 1.0
LATENCY_THREADS = 2

NOTES = REPO / "bench" / "notes" / "fleet.md"

GOAL_CPU_RATIO = 1.05
GOAL_CALLS_PER_ADMITTED = 1 / 50
GOAL_ADDED_P99_MS = 2.0
GOAL_UNDER_ADMISSION = 0.01


# --- processes -------------------------------------------------------------------------------


class Redis:
    """`redis-server` on a loopback port of its own under the bench's supervisor, persisting
    nothing."""

    def __init__(self, bench: Bench, cpus: str | None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is missing: scripts/setup.sh installs it (Debian's redis-server)")
        directory = bench.workdir / "redis"
        directory.mkdir(parents=True, exist_ok=True)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(directory), "--save", "", "--appendonly", "no"]
        self.process = bench.supervisor.start(argv, directory / "redis.log", cpus=cpus)
        wait_until(self.ping, 30, f"redis-server to answer PING on port {self.port}")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def ping(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self.process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                s.sendall(b"*1\r\n$4\r\nPING\r\n")
                return s.recv(64) == b"+PONG\r\n"
        except OSError:
            return False

    def cpu_ticks(self) -> int:
        return cpu_ticks(self.process.pid)

    def counts(self, keys: list[str]) -> list[int | None]:
        """MGET of integer counters (None for a key that is not there)."""
        request = f"*{len(keys) + 1}\r\n$4\r\nMGET\r\n".encode() + b"".join(f"${len(k)}\r\n{k}\r\n".encode() for k in keys)
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(request)
            reply = b""
            for _ in range(10_000):
                chunk = s.recv(65536)
                reply += chunk
                if not chunk or complete_array(reply, len(keys)):
                    break
        return parse_integers(reply, len(keys))


def complete_array(reply: bytes, n: int) -> bool:
    try:
        parse_integers(reply, n)
        return True
    except (ValueError, IndexError):
        return False


def parse_integers(reply: bytes, n: int) -> list[int | None]:
    """A RESP array of n bulk strings holding integers, or nil."""
    lines = reply.split(b"\r\n")
    if not lines[0].startswith(b"*") or int(lines[0][1:]) != n:
        raise ValueError(f"not an array of {n}: {reply[:80]!r}")
    values: list[int | None] = []
    i = 1
    while len(values) < n:
        if lines[i] == b"$-1":
            values.append(None)
            i += 1
        else:
            values.append(int(lines[i + 1]))
            i += 2
    if i >= len(lines):
        raise IndexError("incomplete")
    return values


def seed(cp: live.ControlPlane) -> tuple[dict[str, str], dict[str, int]]:
    """One private API under /orders offering every plan of PLANS; one client per plan with a
    contract through it. Returns the keys and contract ids by plan."""
    cp.ensure("POST", "/v1/orgs", {"id": ORG, "name": ORG})
    for plan, limits in PLANS.items():
        cp.ensure("POST", f"/v1/orgs/{ORG}/plans", {"id": plan, "name": plan})
        cp.ok("POST", f"/v1/orgs/{ORG}/plans/{plan}/versions", {"version": "1", "limits": [{"requests": n, "per": p} for n, p in limits]})
        cp.ok("POST", f"/v1/orgs/{ORG}/plans/{plan}/versions/1/lock")
    cp.ensure("POST", f"/v1/orgs/{ORG}/apis", {"id": "orders", "name": "orders"})
    cp.ok(
        "POST",
        f"/v1/orgs/{ORG}/apis/orders/versions",
        {"version": "1", "public": False, "routing": {"path_prefix": API_PREFIX, "hosts": []}, "plans": [{"plan": p, "version": "1"} for p in PLANS]},
    )
    cp.ok("POST", f"/v1/orgs/{ORG}/apis/orders/versions/1/publish")
    keys, ids = {}, {}
    for plan in PLANS:
        keys[plan] = cp.client_version(ORG, plan)
        ids[plan] = cp.contract(ORG, plan, "orders", plan)
    return keys, ids


def gateway(bench: Bench, cp: live.ControlPlane, name: str, upstream_port: int, concurrency: int, cpus: str | None) -> e.Envoy:
    generated = live.gateway(bench, cp.url, name, upstream_port, concurrency, cpus)
    return e.Envoy(name, production.with_direct_route(generated.config), bench.workdir, concurrency=concurrency, cpus=cpus, env=live.gateway_env()).start(
        bench.supervisor, bench.envoy_binary
    )


def url(gateway: e.Envoy) -> str:
    return gateway.url(live.listener_name(gateway), PATH)


def stat(gateway: e.Envoy, name: str) -> int:
    return sum(gateway.stats(name).values())


def grants_received(gateways: list[e.Envoy]) -> int:
    """Broker answers the gateways' workers received (`tollgate_fleet_grants_total`). The
    filter hands its tallies to Envoy on its tick (20 ms in live mode): read after two."""
    time.sleep(0.05)
    return sum(stat(g, "tollgate_fleet_grants_total") for g in gateways)


def broker_metric(cp: live.ControlPlane, metric: str, labels: dict[str, str] | None = None) -> float:
    status, body = e.http_get(f"{cp.url}/metrics", {"authorization": f"Bearer {live.SECRETS['TOLLGATE_ADMIN_TOKEN']}"})
    if status != 200:
        raise RuntimeError(f"control plane {cp.name}: /metrics answered {status}")
    return e.prometheus_value(body.decode(), metric, labels)


def grant_seconds_buckets(cp: live.ControlPlane) -> dict[float, float]:
    """The broker's `tollgate_fleet_grant_seconds` histogram: cumulative count per upper bound."""
    status, body = e.http_get(f"{cp.url}/metrics", {"authorization": f"Bearer {live.SECRETS['TOLLGATE_ADMIN_TOKEN']}"})
    if status != 200:
        raise RuntimeError(f"control plane {cp.name}: /metrics answered {status}")
    buckets: dict[float, float] = {}
    for line in body.decode().splitlines():
        if line.startswith("tollgate_fleet_grant_seconds_bucket{"):
            head, _, value = line.rpartition(" ")
            bound = head.split('le="', 1)[1].split('"', 1)[0]
            buckets[float("inf") if bound == "+Inf" else float(bound)] = float(value)
    return buckets


def histogram_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """The upper bound of the bucket holding quantile q of what was observed in between."""
    counts = sorted((bound, after[bound] - before.get(bound, 0.0)) for bound in after)
    total = counts[-1][1] if counts else 0.0
    for bound, cumulative in counts:
        if total and cumulative >= q * total:
            return bound
    return float("nan")


def grants_so_far(cp: live.ControlPlane) -> tuple[float, float]:
    """(lease answers that granted something, units granted) since the control plane started."""
    return broker_metric(cp, "tollgate_fleet_lease_answers_total", {"outcome": "granted"}), broker_metric(cp, "tollgate_fleet_units_granted_total")


# --- client threads --------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    target: int  # index of the (gateway, key) it was sent to
    sent: float  # time.time() before the request was written
    received: float  # time.time() once the whole answer was read
    status: int  # 0: the connection failed
    latency_s: float  # perf_counter() difference, for part 4


def drive(targets: list[tuple[e.Envoy, str]], threads_each: int, seconds: float) -> list[Answer]:
    """`threads_each` threads per (gateway, key), each on its own keep-alive connection, all
    released together and sending back to back for `seconds` (and at most a fixed count). A
    failed connection is reopened and its error kept as status 0."""
    answers: list[Answer] = []
    lock = threading.Lock()
    release = threading.Barrier(len(targets) * threads_each + 1)
    stop_at = [float("inf")]

    def run(index: int, gateway: e.Envoy, key: str) -> None:
        port = gateway.ports[live.listener_name(gateway)]
        seen: list[Answer] = []
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            connection.connect()
            release.wait(timeout=60)
            for _ in range(2_000_000):
                sent = time.time()
                if sent >= stop_at[0]:
                    break
                began = time.perf_counter()
                try:
                    connection.request("GET", PATH, headers={"x-api-key": key})
                    response = connection.getresponse()
                    response.read()
                    status = response.status
                except (OSError, http.client.HTTPException):
                    status = 0
                    connection.close()
                    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                seen.append(Answer(index, sent, time.time(), status, time.perf_counter() - began))
        finally:
            connection.close()
            with lock:
                answers.extend(seen)

    workers = [threading.Thread(target=run, args=(i, g, k), daemon=True) for i, (g, k) in enumerate(targets) for _ in range(threads_each)]
    for w in workers:
        w.start()
    release.wait(timeout=60)
    stop_at[0] = time.time() + seconds
    for w in workers:
        w.join(timeout=seconds + 60)
    if any(w.is_alive() for w in workers):
        raise RuntimeError("a client thread hung")
    return answers


def statuses(answers: list[Answer]) -> dict[int, int]:
    counted: dict[int, int] = {}
    for a in answers:
        counted[a.status] = counted.get(a.status, 0) + 1
    return counted


# --- 1. exactness ----------------------------------------------------------------------------


@dataclass
class Window:
    start: int
    admitted: int  # 200s received in the window (the decision fell between send and receive)
    straddling: int  # of those, sent before the window began
    refused: int
    granted: int | None = None  # the window's count in Redis: what the broker granted in all


@dataclass
class Exactness:
    plan: str
    limit: int
    windows: list[Window]  # exhausted windows wholly inside the run
    statuses: dict[int, int]

    @property
    def over(self) -> int:
        """Admissions certainly decided in a window beyond its L: sent after it began."""
        return max((w.admitted - w.straddling - self.limit for w in self.windows), default=0)

    @property
    def over_with_straddling(self) -> int:
        """The same counting the straddling admissions too (some were decided in the window
        before): an upper bound."""
        return max((w.admitted - self.limit for w in self.windows), default=0)

    @property
    def worst(self) -> Window | None:
        return max(self.windows, key=lambda w: w.admitted - w.straddling, default=None)

    @property
    def worst_under(self) -> int:
        return max((self.limit - w.admitted for w in self.windows), default=0)

    @property
    def mean_under(self) -> float:
        return sum(self.limit - w.admitted for w in self.windows) / len(self.windows) if self.windows else 0.0


def exhausted_windows(answers: list[Answer], seconds: int, began: float, ended: float) -> list[Window]:
    """Windows wholly inside [began, ended] that refused at least once (the limit was reached)."""
    found: dict[int, Window] = {}
    for a in answers:
        start = int(a.received // seconds) * seconds
        window = found.setdefault(start, Window(start, 0, 0, 0))
        if a.status == 200:
            window.admitted += 1
            window.straddling += int(a.sent < start)
        elif a.status == 429:
            window.refused += 1
    return [w for s, w in sorted(found.items()) if s >= began and s + seconds <= ended and w.refused]


@dataclass
class ExactnessRun:
    results: list[Exactness]
    seconds: float
    connections: int
    calls: int  # broker answers the gateways received
    admitted: int
    grant_size: float  # mean units per lease answer that granted
    requests_per_s: float
    broker_failures: int = 0  # asks the gateways gave up on (each puts one on its fallback for 1 s)
    redis_errors: int = 0  # lease requests the broker answered 503 (Redis late or away)


class GrantedCounts:
    """Reads, every second while the hammering runs, the Redis counters of the windows just
    past (a counter outlives its window by a minute): what the broker granted per window."""

    def __init__(self, redis: Redis, contracts: dict[str, int]) -> None:
        self.redis = redis
        self.contracts = contracts
        self.seen: dict[tuple[str, int], int] = {}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        for _ in range(100_000):
            self.read()
            if self.done.wait(1.0):
                self.read()
                return

    def read(self) -> None:
        now = int(time.time())
        wanted: list[tuple[str, int]] = []
        for plan, contract in self.contracts.items():
            length = {"second": 1, "minute": 60}[PLANS[plan][0][1]]
            current = now // length * length
            wanted += [(plan, current - k * length) for k in range(0, 5 if length == 1 else 2)]
        keys = [f"tollgate:{{c{self.contracts[plan]}}}:{PLANS[plan][0][1]}:{start}" for plan, start in wanted]
        for key, value in zip(wanted, self.redis.counts(keys)):
            if value is not None:
                self.seen[key] = max(value, self.seen.get(key, 0))

    def __enter__(self) -> "GrantedCounts":
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.done.set()
        self.thread.join(timeout=30)


def exactness(bench: Bench, fleet: list[e.Envoy], keys: dict[str, str], ids: dict[str, int], cp: live.ControlPlane, redis: Redis) -> ExactnessRun:
    """Every exactness contract hammered at once through every gateway of the fleet."""
    plans = ["per-second"] if bench.quick else ["per-second", "per-minute"]
    seconds = 3.0 if bench.quick else 125.0
    threads_each = 1 if bench.quick else 3
    targets = [(g, keys[plan]) for plan in plans for g in fleet]
    calls_before = grants_received(fleet)
    failures_before = sum(stat(g, "tollgate_fleet_broker_failures_total") for g in fleet)
    redis_errors_before = broker_metric(cp, "tollgate_fleet_redis_errors_total")
    granted_before, units_before = grants_so_far(cp)
    bench.log(f"fleet exactness: {len(fleet)} gateways × {len(plans)} contracts × {threads_each} connections, {seconds:.0f}s")
    with GrantedCounts(redis, {plan: ids[plan] for plan in plans}) as granted:
        began = time.time()
        answers = drive(targets, threads_each, seconds)
        ended = time.time()
    calls = grants_received(fleet) - calls_before
    granted_after, units_after = grants_so_far(cp)
    results = []
    for p, plan in enumerate(plans):
        limit, period = PLANS[plan][0]
        mine = [a for a in answers if a.target // len(fleet) == p]
        windows = exhausted_windows(mine, {"second": 1, "minute": 60}[period], began, ended)
        for w in windows:
            w.granted = granted.seen.get((plan, w.start))
        results.append(Exactness(plan, limit, windows, statuses(mine)))
    admitted = sum(1 for a in answers if a.status == 200)
    failures = sum(stat(g, "tollgate_fleet_broker_failures_total") for g in fleet) - failures_before
    redis_errors = int(broker_metric(cp, "tollgate_fleet_redis_errors_total") - redis_errors_before)
    return ExactnessRun(
        results,
        ended - began,
        len(targets) * threads_each,
        calls,
        admitted,
        (units_after - units_before) / max(1.0, granted_after - granted_before),
        len(answers) / (ended - began),
        failures,
        redis_errors,
    )


# --- 2 and 3. allow-path cost ----------------------------------------------------------------


@dataclass
class Sample:
    requests_per_s: float
    cpu_us_per_request: float
    requests: int


def measure(bench: Bench, gateway: e.Envoy, key: str, seconds: float) -> Sample:
    before = gateway.cpu_ticks()
    result = run_wrk(url(gateway), duration_s=seconds, connections=CONNECTIONS, threads=1, headers={"x-api-key": key}, cpus=bench.cpus.load)
    ticks = gateway.cpu_ticks() - before
    if result.requests == 0 or result.non_2xx_3xx:
        raise RuntimeError(f"{gateway.name}: {result.non_2xx_3xx} of {result.requests} answers were not 200")
    return Sample(result.requests_per_s, ticks / CLOCK_TICKS_PER_S * 1e6 / result.requests, result.requests)


@dataclass
class CostRun:
    fleet: list[Sample]
    local: list[Sample]
    calls: int  # broker answers the fleet gateway received over the rounds
    # Part 3 on a contract of BUSY a second through the fleet gateway: broker answers,
    # admitted, seconds.
    busy_calls: int = 0
    busy_admitted: int = 0
    busy_seconds: float = 0.0

    def ratio(self, attr: str) -> float:
        return median([getattr(f, attr) / getattr(l, attr) for f, l in zip(self.fleet, self.local)])

    @property
    def calls_per_admitted(self) -> float:
        return self.calls / max(1, sum(s.requests for s in self.fleet))


def cost(bench: Bench, fleet_gateway: e.Envoy, local_gateway: e.Envoy, fleet_key: str, local_key: str, busy_key: str) -> CostRun:
    pairs = ((fleet_gateway, fleet_key), (local_gateway, local_key))
    for gateway, key in pairs:
        measure(bench, gateway, key, WARMUP_S)
    calls_before = grants_received([fleet_gateway])
    run = CostRun([], [], 0)
    for n in range(bench.rounds):
        bench.log(f"fleet cost round {n + 1}/{bench.rounds}: 2 cells × {bench.round_seconds:.0f}s")
        # Alternate which goes first, so drift within a round favours neither.
        for gateway, key in pairs if n % 2 == 0 else pairs[::-1]:
            (run.fleet if gateway is fleet_gateway else run.local).append(measure(bench, gateway, key, bench.round_seconds))
    run.calls = grants_received([fleet_gateway]) - calls_before
    bench.log(f"fleet broker calls: {BUSY:,} a second through one gateway, {bench.round_seconds:.0f}s")
    before = grants_received([fleet_gateway])
    busy = run_wrk(url(fleet_gateway), duration_s=bench.round_seconds, connections=CONNECTIONS, threads=1, headers={"x-api-key": busy_key}, script=STATUSES, cpus=bench.cpus.load)
    run.busy_calls = grants_received([fleet_gateway]) - before
    run.busy_admitted, run.busy_seconds = busy.statuses.get(200, 0), busy.duration_s
    return run


# --- 4. latency of requests that waited for a grant -------------------------------------------


@dataclass
class LatencyRun:
    fleet: list[float]  # seconds, every request
    local: list[float]
    waits: int  # broker answers the fleet gateway received: at least one request waited on each
    fleet_statuses: dict[int, int]
    local_statuses: dict[int, int]
    broker_s: float = 0.0  # mean time the broker took per grant (its tollgate_fleet_grant_seconds)
    broker_p99_s: float = 0.0  # the upper bound of the histogram bucket holding its p99

    @property
    def added_matched(self) -> list[float]:
        """The waited requests' latencies minus the per-process requests at the same rank of
        the same-sized tail: what waiting added beyond the tail both cells share."""
        if not self.waits or not self.local:
            return []
        tail = max(1, round(self.waits * len(self.local) / max(1, len(self.fleet))))
        local = sorted(self.local)[-tail:]
        return [x - local[min(len(local) - 1, int(i * len(local) / len(self.waited)))] for i, x in enumerate(self.waited)]

    @property
    def waited(self) -> list[float]:
        """The slowest `waits` fleet latencies: the requests that waited are among the slowest,
        and taking exactly as many as there were callouts can only overstate their latency."""
        return sorted(self.fleet)[-self.waits :] if self.waits else []


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def latency(bench: Bench, fleet_gateway: e.Envoy, local_gateway: e.Envoy, fleet_key: str, local_key: str, cp: live.ControlPlane) -> LatencyRun:
    rounds = 1 if bench.quick else 3
    seconds = 1.0 if bench.quick else 10.0
    run = LatencyRun([], [], 0, {}, {})
    before = grants_received([fleet_gateway])
    seconds_before = broker_metric(cp, "tollgate_fleet_grant_seconds_sum"), broker_metric(cp, "tollgate_fleet_grant_seconds_count")
    buckets_before = grant_seconds_buckets(cp)
    for n in range(rounds):
        bench.log(f"fleet latency round {n + 1}/{rounds}: 2 cells × {seconds:.0f}s")
        for gateway, key in ((fleet_gateway, fleet_key), (local_gateway, local_key)):
            answers = drive([(gateway, key)], LATENCY_THREADS, seconds)
            into, counted = (run.fleet, run.fleet_statuses) if gateway is fleet_gateway else (run.local, run.local_statuses)
            into += [a.latency_s for a in answers if a.status in (200, 429)]
            for status, count in statuses(answers).items():
                counted[status] = counted.get(status, 0) + count
    run.waits = grants_received([fleet_gateway]) - before
    total = broker_metric(cp, "tollgate_fleet_grant_seconds_sum") - seconds_before[0]
    run.broker_s = total / max(1.0, broker_metric(cp, "tollgate_fleet_grant_seconds_count") - seconds_before[1])
    run.broker_p99_s = histogram_quantile(buckets_before, grant_seconds_buckets(cp), 0.99)
    return run


# --- 5. broker + Redis throughput -------------------------------------------------------------


@dataclass
class BrokerRun:
    grant_size: int
    grants_per_s: float
    cp_us_per_grant: float
    redis_us_per_grant: float
    p99_ms: float
    cores: str


def broker(bench: Bench, cp: live.ControlPlane, redis: Redis, contract: int, grant_size: int) -> BrokerRun:
    """wrk POSTs one gateway's lease request for a limit that never runs out, so every answer
    grants `grant_size` units; the control plane pinned to one core, Redis and wrk on the other."""
    assert cp.process is not None
    cp_core = bench.cpus.envoy
    if cp_core is not None:
        # Every thread of the running control plane (Tokio's workers included) onto one core.
        subprocess_run(["taskset", "-a", "-p", "-c", cp_core, str(cp.process.pid)])
    body = json.dumps({"gateway": "00000000be7c0000", "contract": contract, "limits": [{"requests": NEVER_BINDS, "per": "day"}], "want": grant_size})
    env = {"TOLLGATE_BENCH_LEASE": body, "PATH": "/usr/bin:/bin:/usr/local/bin"}
    headers = {"authorization": f"Bearer {live.SECRETS['TOLLGATE_GATEWAY_TOKEN']}"}
    seconds = 1.0 if bench.quick else 10.0
    target = f"{cp.url}/gateway/v1/leases"
    run_wrk(target, duration_s=1, connections=16, threads=1, headers=headers, script=LEASE, cpus=bench.cpus.load, env=env)
    cp_before, redis_before = cpu_ticks(cp.process.pid), redis.cpu_ticks()
    result = run_wrk(target, duration_s=seconds, connections=16, threads=1, headers=headers, script=LEASE, cpus=bench.cpus.load, env=env)
    cp_ticks, redis_ticks = cpu_ticks(cp.process.pid) - cp_before, redis.cpu_ticks() - redis_before
    if result.requests == 0 or result.statuses.get(200, 0) != result.requests:
        raise RuntimeError(f"lease requests: {result.statuses} of {result.requests}")
    per_grant = 1e6 / CLOCK_TICKS_PER_S / result.requests
    return BrokerRun(
        grant_size,
        result.requests_per_s,
        cp_ticks * per_grant,
        redis_ticks * per_grant,
        result.p99_ms,
        f"control plane on CPU {cp_core}, Redis and wrk on CPU {bench.cpus.load}" if cp_core is not None else "not pinned (one CPU)",
    )


def subprocess_run(argv: list[str]) -> None:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {out.stderr}")


# --- the section -----------------------------------------------------------------------------


def run(bench: Bench) -> SectionReport:
    redis = Redis(bench, bench.cpus.load)
    upstream = live.upstream(bench)
    fleet_cp = live.ControlPlane(bench, "fleet-cp", args=("--redis", redis.url)).start(cpus=bench.cpus.load)
    local_cp = live.ControlPlane(bench, "local-cp").start(cpus=bench.cpus.load)
    fleet_keys, fleet_ids = seed(fleet_cp)
    local_keys, _ = seed(local_cp)
    port = upstream.ports["upstream"]
    fleet = [gateway(bench, fleet_cp, f"fleet-{n}", port, WORKERS, None) for n in range(GATEWAYS)]
    fleet_one = gateway(bench, fleet_cp, "fleet-measured", port, 1, bench.cpus.envoy)
    local_one = gateway(bench, local_cp, "local-measured", port, 1, bench.cpus.envoy)
    for g, key in [*[(g, fleet_keys["gold"]) for g in fleet], (fleet_one, fleet_keys["gold"]), (local_one, local_keys["gold"])]:
        wait_until(lambda: e.http_get(url(g), {"x-api-key": key})[0] == 200, 60, f"gateway {g.name} to enforce the catalogue")
    if stat(fleet_one, "tollgate_fleet_grants_total") == 0 and wait_until(lambda: stat(fleet_one, "tollgate_fleet_grants_total"), 10, "a fleet grant") == 0:
        raise RuntimeError("the fleet gateway asked the broker for nothing: is the control plane's snapshot fleet-wide?")

    exact = exactness(bench, fleet, fleet_keys, fleet_ids, fleet_cp, redis)
    granted_before, units_before = grants_so_far(fleet_cp)
    allow = cost(bench, fleet_one, local_one, fleet_keys["gold"], local_keys["gold"], fleet_keys["busy"])
    granted_after, units_after = grants_so_far(fleet_cp)
    allow_grant = (units_after - units_before) / max(1.0, granted_after - granted_before)
    waits = latency(bench, fleet_one, local_one, fleet_keys["tight"], local_keys["tight"], fleet_cp)
    for g in [*fleet, fleet_one, local_one]:
        if g.process is not None and g.process.poll() is not None:
            raise RuntimeError(f"envoy {g.name} exited during the run:\n{g.log_tail()}")
    throughput = broker(bench, fleet_cp, redis, fleet_ids["gold"], max(1, round(exact.grant_size)))
    return report(bench, exact, allow, allow_grant, waits, throughput)


def one_per(calls: int, admitted: int) -> str:
    return f"1 per {admitted / calls:,.0f}" if calls else f"none in {admitted:,}"


def verdict(met: bool, missed_by: str) -> str:
    return "met" if met else f"missed by {missed_by}"


def report(bench: Bench, exact: ExactnessRun, allow: CostRun, allow_grant: float, waits: LatencyRun, throughput: BrokerRun) -> SectionReport:
    ms = 1000.0
    parts = [
        "A `redis-server` on loopback (no persistence), the control plane with `--redis` (fleet-wide "
        "counting) and another without it (per-process counting), Envoys from the bootstrap "
        "`tollgate envoy-config` prints (live mode) with `production.py`'s `direct_response` route in "
        "front. Load average: see the header. What bounds each figure: `bench/notes/fleet.md` "
        "(copied below).",
        "",
        f"### 1. Exactness: {GATEWAYS} Envoys × {WORKERS} workers, one contract each hammered through all of them",
        "",
        f"{exact.connections} keep-alive client threads (Python) split over the gateways and contracts, "
        f"{exact.seconds:.0f} s, {exact.requests_per_s:,.0f} answers/s in all. A window counts when it lies "
        "wholly inside the run and refused at least once (the limit was reached); an admission counts in "
        "the window it was received in (*straddling*: sent in the window before). *Redis count* is the "
        "window's counter as the broker left it (read every second during the run): what it granted to all "
        "gateways together.",
        "",
    ]
    rows = []
    worst = []
    for r in exact.results:
        admitted = [w.admitted for w in r.windows]
        w = r.worst
        if w is not None and w.admitted - w.straddling > r.limit:
            worst.append(
                f"{r.plan}: the window at {dt.datetime.fromtimestamp(w.start, dt.timezone.utc):%H:%M:%S} UTC admitted "
                f"{w.admitted:,} ({w.straddling} straddling) where Redis counted {w.granted if w.granted is not None else 'nothing read'}"
            )
        rows.append(
            [
                r.plan,
                f"{r.limit:,}",
                str(len(r.windows)),
                f"{min(admitted, default=0):,}–{max(admitted, default=0):,}",
                f"{max(0, r.over)} ({max(0, r.over_with_straddling)})",
                str(sum(1 for w in r.windows if w.admitted - w.straddling > r.limit)),
                str(max((w.granted for w in r.windows if w.granted is not None), default="–")),
                str(sum(1 for w in r.windows if w.granted is not None and w.admitted > w.granted)),
                f"{r.worst_under:,} ({100 * r.worst_under / r.limit:.1f} %)",
                f"{r.mean_under:.1f} ({100 * r.mean_under / r.limit:.2f} %)",
                str(sum(w.straddling for w in r.windows)),
                ", ".join(f"{k}: {v:,}" for k, v in sorted(r.statuses.items())),
            ]
        )
    parts += [
        table(
            ["contract", "L", "windows", "admitted per window", "over-admission, max (with straddling)", "windows over L", "Redis count (max)", "windows admitting more than Redis granted", "under (worst)", "under (mean)", "straddling", "answers"],
            rows,
        ),
        "",
        *( [f"Over-admitted: {'; '.join(worst)}.", ""] if worst else []),
        f"Broker answers the {GATEWAYS} gateways received while hammering: {exact.calls:,} for {exact.admitted:,} "
        f"admitted (1 per {exact.admitted / max(1, exact.calls):,.1f}); mean grant {exact.grant_size:.1f} units. "
        f"Asks the gateways gave up on (`tollgate_fleet_broker_failures_total`; after one, a gateway admits "
        f"only what it holds for a second; from two in a row, `--fleet-fallback share`, whose documented "
        f"bound in a window that began before is L + N × ⌊L / N⌋): {exact.broker_failures}; lease requests the broker answered 503 "
        f"(`tollgate_fleet_redis_errors_total`): {exact.redis_errors}.",
        "",
    ]
    cpu, rps = allow.ratio("cpu_us_per_request"), allow.ratio("requests_per_s")
    rows = [
        [label, f"{median([s.requests_per_s for s in samples]):,.0f}", f"{median([s.cpu_us_per_request for s in samples]):.1f}",
         f"{min(s.cpu_us_per_request for s in samples):.1f}–{max(s.cpu_us_per_request for s in samples):.1f}"]
        for label, samples in (("fleet-wide (control plane with --redis)", allow.fleet), ("per process (control plane without --redis)", allow.local))
    ]
    parts += [
        "### 2. Allow path with a held grant, and 3. broker calls per admitted request",
        "",
        f"One Envoy `--concurrency 1` pinned to CPU {bench.cpus.envoy}, a plan of {NEVER_BINDS:,} a day; "
        f"wrk `-t1 -c{CONNECTIONS}` on the other CPU, {len(allow.fleet)} interleaved round(s) of "
        f"{bench.round_seconds:.0f} s per cell after a {WARMUP_S:.0f} s warm-up. Ratios are medians of "
        "per-round ratios.",
        "",
        table(["counting", "req/s", "CPU µs/req", "CPU range"], rows),
        "",
        f"Fleet ÷ per process: Envoy CPU per request **{cpu:.3f}×** (goal ≤ {GOAL_CPU_RATIO}: "
        f"{verdict(cpu <= GOAL_CPU_RATIO, f'{cpu - GOAL_CPU_RATIO:.3f}')}), throughput **{rps:.3f}×**. "
        f"Broker answers over the rounds: {allow.calls:,} for {sum(s.requests for s in allow.fleet):,} admitted "
        f"({one_per(allow.calls, sum(s.requests for s in allow.fleet))}; goal ≤ 1 per 50: "
        f"{verdict(allow.calls_per_admitted <= GOAL_CALLS_PER_ADMITTED, f'{allow.calls_per_admitted * 50:.1f}× the goal')}); "
        f"mean grant {allow_grant:,.0f} units.",
        "",
        f"A contract of {BUSY:,} a second through the same fleet gateway (wrk as above, "
        f"{allow.busy_seconds:.0f} s; each second's window starts from nothing, so grants grow again "
        f"from the smallest ask every second): {allow.busy_admitted / max(allow.busy_seconds, 1e-9):,.0f} admitted/s, "
        f"{allow.busy_calls:,} broker answers for {allow.busy_admitted:,} admitted "
        f"({one_per(allow.busy_calls, allow.busy_admitted)}; goal ≤ 1 per 50: "
        f"{verdict(allow.busy_calls * 50 <= allow.busy_admitted, f'{allow.busy_calls * 50 / max(1, allow.busy_admitted):.2f}× the goal')}).",
        "",
    ]
    waited = waits.waited
    added = [(x - median(waits.local)) * ms for x in waited]
    rows = [
        ["fleet-wide, every request", f"{len(waits.fleet):,}", f"{quantile(waits.fleet, 0.5) * ms:.3f}", f"{quantile(waits.fleet, 0.99) * ms:.3f}", f"{quantile(waits.fleet, 0.999) * ms:.3f}", f"{max(waits.fleet, default=0) * ms:.3f}"],
        ["per process, every request", f"{len(waits.local):,}", f"{quantile(waits.local, 0.5) * ms:.3f}", f"{quantile(waits.local, 0.99) * ms:.3f}", f"{quantile(waits.local, 0.999) * ms:.3f}", f"{max(waits.local, default=0) * ms:.3f}"],
        ["fleet-wide, the slowest as many as broker answers", f"{len(waited):,}", f"{quantile(waited, 0.5) * ms:.3f}", f"{quantile(waited, 0.99) * ms:.3f}", f"{quantile(waited, 0.999) * ms:.3f}", f"{max(waited, default=0) * ms:.3f}"],
    ]
    added_p99 = quantile(added, 0.99)
    matched = waits.added_matched
    matched_p99 = quantile(matched, 0.99) * ms
    parts += [
        "### 4. Latency of the requests that waited for a grant",
        "",
        f"A plan of {TIGHT} a second (its grant runs out many times a second), the same two Envoys; "
        f"{LATENCY_THREADS} client threads (Python) on keep-alive connections, back to back, each request's "
        "latency; fleet and per process in interleaved rounds. The gateway does not say which request "
        f"waited: the fleet gateway received {waits.waits:,} broker answers, so the slowest {waits.waits:,} "
        "fleet requests stand for those that waited (an overstatement: at least one request waited on each).",
        "",
        table(["requests", "n", "p50 ms", "p99 ms", "p99.9 ms", "max ms"], rows),
        "",
        f"Answers: fleet {waits.fleet_statuses}, per process {waits.local_statuses}. Added latency of the "
        f"requests that waited, against the per-process median (an upper bound): p50 {quantile(added, 0.5):.3f} ms, "
        f"p99 {added_p99:.3f} ms, max {max(added, default=0):.3f} ms. "
        f"Tails, fleet − per process: p99 {(quantile(waits.fleet, 0.99) - quantile(waits.local, 0.99)) * ms:+.3f} ms, "
        f"p99.9 {(quantile(waits.fleet, 0.999) - quantile(waits.local, 0.999)) * ms:+.3f} ms. "
        f"Against the per-process requests of the same rank in a tail of the same share (what both cells' "
        f"clients and machine add alike taken out): p50 {quantile(matched, 0.5) * ms:.3f} ms, **p99 "
        f"{matched_p99:.3f} ms** (goal ≤ {GOAL_ADDED_P99_MS} ms: "
        f"{verdict(matched_p99 <= GOAL_ADDED_P99_MS, f'{matched_p99 - GOAL_ADDED_P99_MS:.3f} ms')}), max {max(matched, default=0) * ms:.3f} ms. The broker itself "
        f"took {waits.broker_s * ms:.3f} ms per grant on average, p99 ≤ {waits.broker_p99_s * ms:.1f} ms "
        "(`tollgate_fleet_grant_seconds`: the broker's Redis step, not the HTTP around it; the p99 is its bucket's upper bound).",
        "",
    ]
    redis_core = 1e6 / throughput.redis_us_per_grant if throughput.redis_us_per_grant else float("inf")
    parts += [
        "### 5. Broker + Redis throughput",
        "",
        f"wrk `-t1 -c16` POSTs one gateway's lease request (want {throughput.grant_size}, the mean grant of 1, "
        f"a limit that never runs out) to `/gateway/v1/leases`; {throughput.cores}.",
        "",
        table(
            ["grants/s", "p99 ms", "control plane CPU µs/grant", "Redis CPU µs/grant", "grants/s per Redis core", "admitted req/s per Redis core at g"],
            [[f"{throughput.grants_per_s:,.0f}", f"{throughput.p99_ms:.2f}", f"{throughput.cp_us_per_grant:.1f}", f"{throughput.redis_us_per_grant:.1f}",
              f"{redis_core:,.0f}", f"{redis_core * throughput.grant_size:,.0f}"]],
        ),
        "",
    ]
    parts += ["### Notes", "", NOTES.read_text().strip() if NOTES.exists() else "(bench/notes/fleet.md is missing)", ""]
    over = max(0, max((r.over for r in exact.results), default=0))
    under = max((r.worst_under / r.limit for r in exact.results), default=0.0)
    headlines = [
        f"Fleet, exactness ({GATEWAYS} Envoys × {WORKERS} workers): over-admission {over} (goal 0: {verdict(over == 0, str(over))}), "
        f"worst under-admission {100 * under:.1f} % of L (goal ≤ 1 %: {verdict(under <= GOAL_UNDER_ADMISSION, f'{100 * (under - GOAL_UNDER_ADMISSION):.1f} points')}) "
        f"over {sum(len(r.windows) for r in exact.results)} exhausted windows.",
        f"Fleet, allow path with a held grant: {cpu:.3f}× per-process counting's Envoy CPU per request (goal ≤ {GOAL_CPU_RATIO}: "
        f"{verdict(cpu <= GOAL_CPU_RATIO, f'{cpu - GOAL_CPU_RATIO:.3f}')}), {rps:.3f}× its throughput; broker calls "
        f"{one_per(allow.calls, sum(s.requests for s in allow.fleet))} admitted at {median([s.requests_per_s for s in allow.fleet]):,.0f} req/s on a plan that never binds, "
        f"{one_per(allow.busy_calls, allow.busy_admitted)} at {allow.busy_admitted / max(allow.busy_seconds, 1e-9):,.0f} admitted/s "
        f"on {BUSY:,} a second (goal ≤ 1 per 50: {verdict(allow.busy_calls * 50 <= allow.busy_admitted, f'{allow.busy_calls * 50 / max(1, allow.busy_admitted):.2f}× the goal')}).",
        f"Fleet, waiting for a grant: added p99 {matched_p99:.3f} ms against per-process requests of the same tail rank "
        f"(goal ≤ {GOAL_ADDED_P99_MS} ms: {verdict(matched_p99 <= GOAL_ADDED_P99_MS, f'{matched_p99 - GOAL_ADDED_P99_MS:.3f} ms')}; "
        f"{added_p99:.3f} ms against the per-process median, an upper bound); "
        f"broker {throughput.grants_per_s:,.0f} grants/s on one core, a Redis core backs {redis_core * throughput.grant_size:,.0f} admitted req/s at g = {throughput.grant_size}.",
    ]
    return SectionReport("5. Fleet-wide counting (issue 13)", "\n".join(parts), headlines)

