"""Issue 6 part 4 — scale.

Catalogues of N client versions, each with one key and one contract (1k, 100k and 1M; --quick:
1k and 10k), all on one private API through one plan with two limits. For each N:

- control plane: the real `tollgate serve` on a SQLite file the bench filled in bulk
  (bulk.py): seconds to open it (it renders, paginates, verifies and signs the snapshot before
  it listens), seconds for one more change through the HTTP API (the same work per write),
  and the snapshot's pages and bytes as a gateway fetches them. Where the real control plane
  cannot render the catalogue in bounded time here (above REAL_CONTROL_PLANE_MAX keys, see
  the report), a stand-in serves the same pages (standin.py) so the gateway can be measured;
- gateway: an Envoy with 2 workers from `tollgate envoy-config`: seconds from its exec to the
  first request enforced with a catalogue key (200), and its RSS once loaded, against the same
  gateway with an empty catalogue: (RSS − RSS empty) / N bytes per key;
- request cost at the largest N against the smallest: two 1-worker gateways pinned to the
  measured core, interleaved wrk rounds as in part 1, CPU µs per allowed request;
- a snapshot swap at the largest N: wrk against the 2-worker gateway while one contract is
  added; max latency and any non-200 or socket error, against a run of the same length
  without a change.
"""

from __future__ import annotations

import json
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
from .standin import StandInControlPlane
from .wrk import STATUSES, WrkResult, run_wrk

# Hand-written reading of what bounds the figures, appended to the measured tables.
NOTES = REPO / "bench" / "notes" / "scale.md"
ORG, API, PLAN, PREFIX = "acme", "orders", "gold", "/orders"
LIMITS = [(10**12, "day"), (10**12, "month")]  # never bind: every request is an allowed one
PATH = "/orders/item"
WORKERS = 2
# Above this the real control plane is not asked to render the catalogue (see the report).
REAL_CONTROL_PLANE_MAX = 100_000
LOAD_DEADLINE_S = 900.0
COST_CONNECTIONS = 32
GOAL_BYTES_PER_KEY = 300
GOAL_COST_RATIO = 1.10
GOAL_SWAP_MAX_MS = 100.0


@dataclass
class Source:
    """What serves the snapshot to a gateway: the real control plane or the stand-in."""

    url: str
    real: bool
    pages: int
    bytes: int
    insert_s: float = 0.0
    open_s: float = 0.0
    change_s: float = 0.0
    fetch_s: float = 0.0
    probe_key: str = ""
    change: Callable[[], None] | None = None
    stop: Callable[[], None] | None = None


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


def real_source(bench: Bench, n: int) -> Source:
    cp = live.ControlPlane(bench, f"scale-cp-{n}").start()
    cp.seed(ORG, PLAN, LIMITS, API, PREFIX)
    cp.stop()
    insert_s = bulk.insert_clients(cp.database, ORG, API, PLAN, n) if n else 0.0
    cp.start(deadline_s=LOAD_DEADLINE_S)
    open_s = cp.start_seconds
    started = time.monotonic()
    probe_key = cp.client_version(ORG, "probe")  # one change: renders the snapshot again
    change_s = time.monotonic() - started
    pages, size, fetch_s = cp.snapshot_pages()
    bench.log(f"scale {n:,}: control plane opened in {open_s:.1f}s, a change took {change_s:.2f}s, {pages} page(s), {size:,} bytes")

    def change() -> None:
        cp.contract(ORG, "probe", API, PLAN)

    return Source(cp.url, True, pages, size, insert_s, open_s, change_s, fetch_s, probe_key, change=change, stop=cp.stop)


def stand_in_source(bench: Bench, n: int, template: live.ControlPlane) -> Source:
    """Pages of the bulk catalogue with the plans and API versions the real control plane
    renders for the same seed (taken from `template`'s snapshot)."""
    _, body = e.http_get(f"{template.url}/v1/snapshot", {"authorization": f"Bearer {live.SECRETS['TOLLGATE_GATEWAY_TOKEN']}"})
    seeded = json.loads(body)
    stand_in = StandInControlPlane(
        ORG, API, PLAN, n, seeded["plans"], seeded["apis"], live.SECRETS["TOLLGATE_GATEWAY_TOKEN"], live.SECRETS["TOLLGATE_SNAPSHOT_SECRET"]
    )
    pages, size = stand_in.size()
    bench.log(f"scale {n:,}: stand-in serves {pages} page(s), {size:,} bytes")
    return Source(stand_in.url, False, pages, size, probe_key=stand_in.probe_key, change=stand_in.add_probe_contract, stop=stand_in.close)


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


def swap(bench: Bench, loaded: Loaded, seconds: float) -> tuple[WrkResult, WrkResult, float]:
    """wrk for `seconds` without a change, then for `seconds` with one change made after a
    fifth of it; returns both runs and the seconds from the change to the probe key's 200."""
    url = loaded.gateway.url(live.listener_name(loaded.gateway), PATH)
    headers = {"x-api-key": bulk.api_key(0)}

    def load() -> WrkResult:
        return run_wrk(url, duration_s=seconds, connections=COST_CONNECTIONS, threads=2, headers=headers, script=STATUSES)

    quiet = load()
    results: list[WrkResult] = []
    thread = threading.Thread(target=lambda: results.append(load()))
    thread.start()
    try:
        time.sleep(seconds / 5)
        assert loaded.source.change is not None
        changed = time.monotonic()
        loaded.source.change()
        wait_until(lambda: enforced(loaded.gateway, loaded.source.probe_key, 200), LOAD_DEADLINE_S, "the swap to be enforced", interval_s=0.01)
        swap_s = time.monotonic() - changed
    finally:
        thread.join(timeout=seconds + 120)
    if not results:
        raise RuntimeError("wrk did not finish during the swap")
    return quiet, results[0], swap_s


def mib(n: float) -> str:
    return f"{n / 2**20:,.1f}"


def run(bench: Bench) -> SectionReport:
    sizes = [1_000, 10_000] if bench.quick else [1_000, 100_000, 1_000_000]
    upstream = live.upstream(bench)
    port = upstream.ports["upstream"]

    empty = real_source(bench, 0)
    template = live.ControlPlane(bench, "scale-cp-0")
    template.port = int(empty.url.rsplit(":", 1)[1])
    baseline = load_gateway(bench, 0, empty, port, WORKERS, None)
    stop_gateway(bench, baseline.gateway)
    bench.log(f"scale: empty catalogue, gateway RSS {mib(baseline.rss)} MiB")

    loaded: list[Loaded] = []
    for n in sizes:
        source = real_source(bench, n) if n <= REAL_CONTROL_PLANE_MAX else stand_in_source(bench, n, template)
        result = load_gateway(bench, n, source, port, WORKERS, None)
        bench.log(f"scale {n:,}: enforced {result.enforced_s:.2f}s after Envoy's exec; RSS {mib(result.rss)} MiB")
        loaded.append(result)
        if n != sizes[-1]:
            stop_gateway(bench, result.gateway)
            if n != sizes[0] and source.stop is not None:
                source.stop()

    # Request cost, largest against smallest catalogue: 1-worker gateways on the measured core.
    small, large = loaded[0], loaded[-1]
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

    swap_seconds = 4.0 if bench.quick else 30.0
    quiet, swapped, swap_s = swap(bench, large, swap_seconds)
    rss_after_swap = rss_bytes(large.gateway.pid)
    for x in (small, large):
        if x.source.stop is not None:
            x.source.stop()

    return report(bench, baseline, loaded, costs, rps, cost_ratio, quiet, swapped, swap_s, rss_after_swap)


def report(
    bench: Bench,
    baseline: Loaded,
    loaded: list[Loaded],
    costs: list[list[float]],
    rps: list[list[float]],
    cost_ratio: float,
    quiet: WrkResult,
    swapped: WrkResult,
    swap_s: float,
    rss_after_swap: int,
) -> SectionReport:
    build = live.tollgate_binary(bench).parent.name
    rows_cp = []
    for x in loaded:
        s = x.source
        if s.real:
            rows_cp.append([f"{x.n:,}", "real", f"{s.insert_s:.1f}", f"{s.open_s:.2f}", f"{s.change_s:.2f}", f"{s.pages}", mib(s.bytes), f"{s.fetch_s:.2f}"])
        else:
            rows_cp.append([f"{x.n:,}", "stand-in (same pages)", "–", "not measured", "not measured", f"{s.pages}", mib(s.bytes), "–"])
    rows_gw = [["0 (empty)", f"{baseline.ready_s:.2f}", f"{baseline.enforced_s:.2f}", mib(baseline.rss), "–", "–"]]
    for x in loaded:
        growth = x.rss - baseline.rss
        rows_gw.append([f"{x.n:,}", f"{x.ready_s:.2f}", f"{x.enforced_s:.2f}", mib(x.rss), mib(growth), f"{growth / x.n:,.0f}"])
    small, large = loaded[0], loaded[-1]
    per_key = (large.rss - baseline.rss) / large.n
    swap_errors = swapped.socket_errors + swapped.non_2xx_3xx
    swap_ok = swap_errors == 0 and swapped.max_ms <= GOAL_SWAP_MAX_MS

    def verdict(ok: bool, by: str) -> str:
        return "met" if ok else f"missed by {by}"

    headlines = [
        f"Scale, memory: {large.n:,} keys+contracts grow the 2-worker Envoy by {per_key:,.0f} bytes per key "
        f"(goal ≤ {GOAL_BYTES_PER_KEY}: {verdict(per_key <= GOAL_BYTES_PER_KEY, f'{per_key - GOAL_BYTES_PER_KEY:,.0f} bytes')}).",
        f"Scale, request cost: {median(costs[1]):.1f} µs CPU per allowed request at {large.n:,} keys vs {median(costs[0]):.1f} µs at "
        f"{small.n:,} (×{cost_ratio:.2f} paired; goal ≤ ×{GOAL_COST_RATIO:.2f}: "
        f"{verdict(cost_ratio <= GOAL_COST_RATIO, f'{100 * (cost_ratio - GOAL_COST_RATIO):.0f} %')}).",
        f"Scale, swap at {large.n:,} keys: max latency {swapped.max_ms:.0f} ms during the swap ({quiet.max_ms:.0f} ms without), "
        f"{swap_errors} request(s) failed (goal: none dropped or delayed > {GOAL_SWAP_MAX_MS:.0f} ms: "
        f"{verdict(swap_ok, f'{swapped.max_ms - GOAL_SWAP_MAX_MS:.0f} ms' if swap_errors == 0 else f'{swap_errors} failed requests')}).",
    ]
    parts = [
        f"Catalogues of N client versions, each with one key and one contract on one private API through a plan "
        f"with two limits (never reached). The control plane is `tollgate serve` ({build} build) on a SQLite file "
        "the bench filled in one transaction with the rows its store writes (`bench/tollgate_bench/bulk.py`); "
        f"gateways are Envoys from `tollgate envoy-config`. Above {REAL_CONTROL_PLANE_MAX:,} keys the real control "
        "plane is not run (see *What bounds the figures* below): a stand-in "
        "(`bench/tollgate_bench/standin.py`) serves the same pages, so the gateway side — poller, verification, "
        "key directory in shared data, workers — is still the product's own code.",
        "",
        "### Control plane",
        "",
        table(
            ["keys", "served by", "bulk insert s", "open s (render + sign)", "one change s", "pages", "snapshot MiB", "fetch all pages s"],
            rows_cp,
        ),
        "",
        "*open* is `tollgate serve`'s exec to `/healthz` (it renders, paginates, verifies and signs the snapshot "
        "before it listens); *one change* is one client version created through the HTTP API, exec to 2xx (every "
        "change renders and signs the whole snapshot in its transaction).",
        "",
        f"### Gateway: load time and memory (Envoy `--concurrency {WORKERS}`)",
        "",
        table(["keys", "Envoy ready s", "first request enforced s", "RSS MiB", "growth MiB", "bytes per key"], rows_gw),
        "",
        "Times from Envoy's exec; *first request enforced* is the first 200 for a catalogue key (the poller "
        "publishes the routing table after the last page, so this is the whole catalogue in shared data). RSS "
        "is `VmRSS` 3 s after that (1 s with --quick); growth is against the same gateway with an empty catalogue. "
        f"After the swap below the {large.n:,}-key gateway's RSS was {mib(rss_after_swap)} MiB. "
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
        f"### Snapshot swap at {large.n:,} keys",
        "",
        table(
            ["run", "requests", "non-200", "socket errors", "p99 ms", "max ms"],
            [
                ["no change", f"{quiet.requests:,}", f"{quiet.non_2xx_3xx:,}", f"{quiet.socket_errors:,}", f"{quiet.p99_ms:.1f}", f"{quiet.max_ms:.1f}"],
                ["one contract added", f"{swapped.requests:,}", f"{swapped.non_2xx_3xx:,}", f"{swapped.socket_errors:,}", f"{swapped.p99_ms:.1f}", f"{swapped.max_ms:.1f}"],
            ],
        ),
        "",
        f"wrk `-t2 -c{COST_CONNECTIONS}` for {quiet.duration_s:.0f} s against the 2-worker gateway (not pinned), once "
        f"without a change and once with one contract added a fifth of the way in; the new contract was enforced "
        f"{swap_s:.2f} s after the change was made (the poller fetches and publishes every page of the new revision).",
    ]
    parts += ["", NOTES.read_text().strip()]
    return SectionReport("4. Scale", "\n".join(parts), headlines)
