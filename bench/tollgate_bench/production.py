"""Issue 11 §3 — the headline: request cost on the bootstrap users deploy.

`tollgate envoy-config` prints the bootstrap (live mode: the singleton poller and the HTTP
filter, path normalisation, the control-plane cluster); its snapshot comes from a real
`tollgate serve`, which always carries the control plane's own token issuer. Two Envoys from
that same bootstrap, both `--concurrency 1` and pinned to the measured core, differ in one
thing: one runs the tollgate HTTP filter, the other the no-op wasm module in its place (same
poller in both, so the main thread's background work is the same). Each has the bootstrap's
route to a real upstream (an Envoy serving `direct_response`) and a `direct_response` route
added in front of it. wrk `-c16` drives one cell at a time in interleaved rounds; a cell's
Envoy CPU per request is utime+stime of that Envoy over the round divided by the requests wrk
saw served. Figures are medians over rounds.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

from . import envoy as e
from . import live
from .catalogue import NEVER_BINDS
from .context import NOOP_WASM, Bench
from .processes import CLOCK_TICKS_PER_S, wait_until
from .report import SectionReport, median, table
from .wrk import run_wrk

CONNECTIONS = 16
WRK_THREADS = 1
WARMUP_S = 1.0

# Goals of issue 11 §3, tollgate allow against the no-op module on the same bootstrap.
GOAL_CPU_RATIO = 1.10
GOAL_THROUGHPUT_RATIO = 0.9
ENVOY_BOUND_UTILISATION = 0.9

ROUTES = {"direct_response": "/orders/direct/item", "upstream": "/orders/upstream/item"}
DIRECT_PREFIX = "/orders/direct"


@dataclass(frozen=True)
class Cell:
    label: str
    gateway: str  # "tollgate", "tollgate_ietf" or "noop"
    key: str = field(default="", hash=False)  # name of the key in Keys, "" for none
    status: int = 200


CELLS = [
    Cell("no-op wasm module (same bootstrap)", "noop", "allowed"),
    Cell("tollgate allow", "tollgate", "allowed"),
    Cell("tollgate allow, rate_limit_headers: ietf", "tollgate_ietf", "allowed"),
    Cell("tollgate deny 401 (no key)", "tollgate", "", 401),
    Cell("tollgate deny 403 (no contract)", "tollgate", "stranger", 403),
    Cell("tollgate deny 429 (exhausted)", "tollgate", "exhausted", 429),
]
NOOP, ALLOW, ALLOW_IETF = CELLS[0], CELLS[1], CELLS[2]
DENIES = CELLS[3:]


def seed(cp: live.ControlPlane) -> dict[str, str]:
    """Orders (private, under /orders) offered through Gold (never binds) and One-a-month;
    Billing offered through Gold. `allowed` holds Gold on orders, `exhausted` One-a-month on
    orders, `stranger` Gold on billing only. Returns their keys."""
    cp.ensure("POST", "/v1/orgs", {"id": "acme", "name": "acme"})
    for plan, limits in (("gold", [(NEVER_BINDS, "day"), (NEVER_BINDS, "month")]), ("one-a-month", [(1, "month"), (NEVER_BINDS, "day")])):
        cp.ensure("POST", "/v1/orgs/acme/plans", {"id": plan, "name": plan})
        cp.ok("POST", f"/v1/orgs/acme/plans/{plan}/versions", {"version": "1", "limits": [{"requests": n, "per": p} for n, p in limits]})
        cp.ok("POST", f"/v1/orgs/acme/plans/{plan}/versions/1/lock")
    for api, prefix, plans in (("orders", "/orders", ("gold", "one-a-month")), ("billing", "/billing", ("gold",))):
        cp.ensure("POST", "/v1/orgs/acme/apis", {"id": api, "name": api})
        cp.ok(
            "POST",
            f"/v1/orgs/acme/apis/{api}/versions",
            {"version": "1", "public": False, "routing": {"path_prefix": prefix, "hosts": []}, "plans": [{"plan": p, "version": "1"} for p in plans]},
        )
        cp.ok("POST", f"/v1/orgs/acme/apis/{api}/versions/1/publish")
    keys = {}
    for name, api, plan in (("allowed", "orders", "gold"), ("exhausted", "orders", "one-a-month"), ("stranger", "billing", "gold")):
        keys[name] = cp.client_version("acme", name)
        cp.ok("POST", f"/v1/orgs/acme/clients/{name}/versions/1/contracts", {"api_org": "acme", "api": api, "api_version": "1", "plan": plan})
    return keys


def with_direct_route(config: dict[str, Any]) -> dict[str, Any]:
    """The bootstrap with a `direct_response` route in front of its route to the upstream."""
    config = copy.deepcopy(config)
    for listener in config["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for f in chain["filters"]:
                for vhost in f["typed_config"]["route_config"]["virtual_hosts"]:
                    vhost["routes"].insert(0, e.direct_response_route(DIRECT_PREFIX))
    return config


def http_wasm_filters(config: dict[str, Any]) -> list[dict[str, Any]]:
    found = [
        http_filter["typed_config"]["config"]
        for listener in config["static_resources"]["listeners"]
        for chain in listener["filter_chains"]
        for f in chain["filters"]
        for http_filter in f["typed_config"]["http_filters"]
        if http_filter["name"] == "envoy.filters.http.wasm"
    ]
    if len(found) != 1:
        raise RuntimeError(f"expected one wasm HTTP filter in the bootstrap, found {len(found)}")
    return found


def with_filter_option(config: dict[str, Any], name: str, value: Any) -> dict[str, Any]:
    """The same bootstrap with one more option in the HTTP filter's configuration (the poller's
    stays as generated)."""
    config = copy.deepcopy(config)
    wasm = http_wasm_filters(config)[0]
    wasm["configuration"]["value"] = json.dumps({**json.loads(wasm["configuration"]["value"]), name: value})
    return config


def with_noop_filter(config: dict[str, Any]) -> dict[str, Any]:
    """The same bootstrap with the HTTP filter's module replaced by the no-op module (its own
    vm_id, empty configuration); the poller stays."""
    config = copy.deepcopy(config)
    replaced = 0
    for listener in config["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for f in chain["filters"]:
                for http_filter in f["typed_config"]["http_filters"]:
                    if http_filter["name"] == "envoy.filters.http.wasm":
                        wasm = http_filter["typed_config"]["config"]
                        wasm["name"] = wasm["root_id"] = wasm["vm_config"]["vm_id"] = "noop"
                        wasm["vm_config"]["code"] = {"local": {"filename": str(NOOP_WASM)}}
                        wasm["configuration"]["value"] = ""
                        replaced += 1
    if replaced != 1:
        raise RuntimeError(f"expected one wasm HTTP filter in the bootstrap, found {replaced}")
    return config


@dataclass
class Sample:
    requests_per_s: float
    p99_ms: float
    cpu_us_per_request: float
    cpu_utilisation: float


def url(gateway: e.Envoy, route: str) -> str:
    return gateway.url(live.listener_name(gateway), ROUTES[route])


def measure(bench: Bench, gateway: e.Envoy, cell: Cell, route: str, keys: dict[str, str], seconds: float) -> Sample:
    headers = {"x-api-key": keys[cell.key]} if cell.key else {}
    before = gateway.cpu_ticks()
    result = run_wrk(url(gateway, route), duration_s=seconds, connections=CONNECTIONS, threads=WRK_THREADS, headers=headers, cpus=bench.cpus.load)
    ticks = gateway.cpu_ticks() - before
    if result.requests == 0:
        raise RuntimeError(f"{cell.label} / {route}: wrk completed no request")
    wrong = result.non_2xx_3xx if cell.status < 300 else result.requests - result.non_2xx_3xx
    if wrong:
        raise RuntimeError(f"{cell.label} / {route}: {wrong} of {result.requests} responses were not {cell.status}")
    cpu_s = ticks / CLOCK_TICKS_PER_S
    return Sample(result.requests_per_s, result.p99_ms, cpu_s * 1e6 / result.requests, cpu_s / result.duration_s)


def run(bench: Bench) -> SectionReport:
    upstream = live.upstream(bench)
    cp = live.ControlPlane(bench, "production-cp").start(cpus=bench.cpus.load)
    keys = seed(cp)
    revision = cp.revision()
    generated = live.gateway(bench, cp.url, "production-tollgate", upstream.ports["upstream"], 1, bench.cpus.envoy)
    bootstrap = with_direct_route(generated.config)
    gateways = {
        "tollgate": e.Envoy("production-tollgate", bootstrap, bench.workdir, concurrency=1, cpus=bench.cpus.envoy, env=live.gateway_env()),
        "tollgate_ietf": e.Envoy("production-tollgate-ietf", with_filter_option(bootstrap, "rate_limit_headers", "ietf"), bench.workdir, concurrency=1, cpus=bench.cpus.envoy, env=live.gateway_env()),
        "noop": e.Envoy("production-noop", with_noop_filter(bootstrap), bench.workdir, concurrency=1, cpus=bench.cpus.envoy, env=live.gateway_env()),
    }
    for gateway in gateways.values():
        gateway.start(bench.supervisor, bench.envoy_binary)
    tollgate = gateways["tollgate"]

    for name in ("tollgate", "tollgate_ietf"):
        gateway = gateways[name]
        wait_until(
            lambda: e.http_get(url(gateway, "direct_response"), {"x-api-key": keys["allowed"]})[0] == 200,
            60,
            f"gateway {name} to enforce revision {revision}",
        )
    status, _ = e.http_get(url(tollgate, "direct_response"), {"x-api-key": keys["exhausted"]})
    if status != 200:
        raise RuntimeError(f"using up the exhausted contract's one request got {status}")
    for cell in CELLS:
        for route in ROUTES:
            headers = {"x-api-key": keys[cell.key]} if cell.key else {}
            got, _ = e.http_get(url(gateways[cell.gateway], route), headers)
            if got != cell.status:
                raise RuntimeError(f"{cell.label} / {route}: expected {cell.status}, got {got}")

    cells = [(cell, route) for cell in CELLS for route in ROUTES]
    for cell, route in cells:
        measure(bench, gateways[cell.gateway], cell, route, keys, WARMUP_S)
    samples: dict[tuple[Cell, str], list[Sample]] = {c: [] for c in cells}
    for n in range(bench.rounds):
        bench.log(f"production round {n + 1}/{bench.rounds}: {len(cells)} cells × {bench.round_seconds:.0f}s")
        for cell, route in cells:
            samples[(cell, route)].append(measure(bench, gateways[cell.gateway], cell, route, keys, bench.round_seconds))
    for gateway in gateways.values():
        if gateway.process is not None and gateway.process.poll() is not None:
            raise RuntimeError(f"envoy {gateway.name} exited during the rounds:\n{gateway.log_tail()}")
    # The filter hands its tallies to Envoy on its tick (20 ms in live mode).
    cache = wait_until(lambda: key_cache_stats(tollgate), 10, "the key-cache counters")
    return report(bench, samples, cache)


def key_cache_stats(gateway: e.Envoy) -> tuple[int, int] | None:
    stats = gateway.stats(r"tollgate_key_cache_(hits|misses)_total")
    hits = sum(v for k, v in stats.items() if k.endswith("hits_total"))
    misses = sum(v for k, v in stats.items() if k.endswith("misses_total"))
    return (hits, misses) if hits or misses else None


def paired_ratio(samples: dict[tuple[Cell, str], list[Sample]], a: Cell, b: Cell, route: str, attr: str) -> float:
    """Median over rounds of a/b in the same round (pairing cancels drift between rounds)."""
    return median([getattr(x, attr) / getattr(y, attr) for x, y in zip(samples[(a, route)], samples[(b, route)]) if getattr(y, attr)])


# Host calls per decision in steady state (the worker's bucket cache warm), as counted by
# core/src/gateway/tests.rs `host_calls_per_decision` over the traits the filter implements
# with one host call each (plus the clock and the response's calls).
HOST_CALLS = [
    ("allow from the worker's lease (x-ratelimit headers; what the measured gateway does between refills)", 8, "clock, all request headers, x-tollgate-client, x-tollgate-plan, key removal, 3 × add response header"),
    ("allow that refills the lease, or claims exactly itself near the limit", 10, "the same plus counter get + CAS set"),
    ("allow (rate_limit_headers: ietf)", "6 / 8", "the same with one `RateLimit` response header"),
    ("deny 401 (no key)", 3, "clock, all request headers, send_local_response"),
    ("deny 403 (no contract)", 3, "clock, all request headers, send_local_response"),
    ("deny 429 (exhausted)", 4, "clock, all request headers, counter get, send_local_response"),
    ("first request of a key (bucket not cached)", 1, "one more: get_shared_data of its bucket"),
]


def report(bench: Bench, samples: dict[tuple[Cell, str], list[Sample]], cache: tuple[int, int] | None = None) -> SectionReport:
    rounds = len(next(iter(samples.values())))
    parts = [
        "The bootstrap `tollgate envoy-config` prints (live mode, snapshot from a real `tollgate serve`, "
        f"which carries its own token issuer), Envoy `--concurrency 1`; wrk `-t{WRK_THREADS} -c{CONNECTIONS}`, "
        f"{rounds} interleaved round(s) of {bench.round_seconds:.0f} s per cell after a {WARMUP_S:.0f} s warm-up. "
        "*×no-op* is the median over rounds of the per-round ratio to the no-op module on the same route; "
        "*×allow* the same against tollgate allow (deny paths must be no dearer). *Envoy CPU* is the "
        "measured Envoy's busy share of its core.",
        "",
    ]
    headlines: list[str] = []
    for route in ROUTES:
        rows = []
        for cell in CELLS:
            s = samples[(cell, route)]
            rows.append(
                [
                    cell.label,
                    str(cell.status),
                    f"{median([x.requests_per_s for x in s]):,.0f}",
                    f"{paired_ratio(samples, cell, NOOP, route, 'requests_per_s'):.2f}",
                    f"{median([x.p99_ms for x in s]):.2f}",
                    f"{median([x.cpu_us_per_request for x in s]):.1f}",
                    f"{paired_ratio(samples, cell, NOOP, route, 'cpu_us_per_request'):.2f}",
                    f"{paired_ratio(samples, cell, ALLOW, route, 'cpu_us_per_request'):.2f}",
                    f"{min(x.cpu_us_per_request for x in s):.1f}–{max(x.cpu_us_per_request for x in s):.1f}",
                    f"{100 * median([x.cpu_utilisation for x in s]):.0f} %",
                ]
            )
        title = "`direct_response` route" if route == "direct_response" else "route to a real upstream (an Envoy serving `direct_response`)"
        parts += [
            f"### {title}",
            "",
            table(["cell", "status", "req/s", "×no-op", "p99 ms", "CPU µs/req", "×no-op", "×allow", "CPU range", "Envoy CPU"], rows, align_right_from=1),
            "",
        ]
        cpu = paired_ratio(samples, ALLOW, NOOP, route, "cpu_us_per_request")
        rps = paired_ratio(samples, ALLOW, NOOP, route, "requests_per_s")
        cpu_verdict = "met" if cpu <= GOAL_CPU_RATIO else f"missed by {cpu - GOAL_CPU_RATIO:.2f}"
        rps_verdict = "met" if rps >= GOAL_THROUGHPUT_RATIO else f"missed by {GOAL_THROUGHPUT_RATIO - rps:.2f}"
        busy = min(median([x.cpu_utilisation for x in samples[(c, route)]]) for c in (NOOP, ALLOW))
        if busy < ENVOY_BOUND_UTILISATION:
            rps_verdict += f"; Envoy was {100 * busy:.0f} % busy, so the load generator's core bounded req/s"
        dearest = max(DENIES, key=lambda c: paired_ratio(samples, c, ALLOW, route, "cpu_us_per_request"))
        deny = paired_ratio(samples, dearest, ALLOW, route, "cpu_us_per_request")
        headlines.append(
            f"Production bootstrap, {route} route: tollgate allow {cpu:.2f}× the no-op module's Envoy CPU per request "
            f"(goal ≤ {GOAL_CPU_RATIO:.2f}: {cpu_verdict}), {rps:.2f}× its throughput (goal ≥ {GOAL_THROUGHPUT_RATIO}: {rps_verdict}); "
            f"dearest deny ({dearest.status}) {deny:.2f}× allow."
        )
    parts += [
        "Host calls per decision (counted by `cargo test -p tollgate-core host_calls_per_decision`):",
        "",
        table(["decision", "host calls", "which"], [[d, str(n), w] for d, n, w in HOST_CALLS], align_right_from=1),
        "",
    ]
    if cache is not None:
        hits, misses = cache
        parts += [
            f"The tollgate gateway's bucket cache over the run: {hits:,} hits, {misses:,} misses "
            f"(`tollgate_key_cache_hits_total`, `_misses_total`).",
            "",
        ]
    return SectionReport("0. Request cost on the production bootstrap (headline)", "\n".join(parts), headlines)
