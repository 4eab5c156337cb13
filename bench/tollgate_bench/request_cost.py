"""Issue 6 part 1 — request cost.

One Envoy with `--concurrency 1` (pinned to its own core) serves every configuration side by
side, one listener each, with the same connection manager and the same two routes: a
`direct_response` route and a route to a real upstream (a second Envoy answering with
`direct_response`, so the upstream is never the bottleneck). wrk drives one configuration at a
time, in interleaved rounds A B C … A B C …; a round's Envoy CPU is utime+stime from
/proc/<pid>/stat, divided by the requests wrk saw served. Figures are medians over rounds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import envoy as e
from .catalogue import NEVER_BINDS, Contract, plugin_configuration
from .context import NOOP_WASM, REPO, Bench
from .processes import CLOCK_TICKS_PER_S
from .report import SectionReport, median, table
from .wrk import run_wrk

# Hand-written reading of the filter's allow path, appended to the measured tables.
CODE_NOTES = REPO / "bench" / "notes" / "request-cost.md"

CONNECTIONS = 32
WRK_THREADS = 1
WARMUP_S = 1.0  # V8 tiers hot wasm functions up; the first second of a listener is not counted

GOLD = Contract(1, "acme/mobile/1", "bench-gold-key-0123456789", "acme/gold/1", ((NEVER_BINDS, "day"), (NEVER_BINDS, "month")))
# One request a month, used up before the rounds start; its second limit never binds.
EXHAUSTED = Contract(2, "acme/exhausted/1", "bench-exhausted-key-0123456789", "acme/one-a-month/1", ((1, "month"), (NEVER_BINDS, "day")))

LUA_KEY_CHECK = """
local keys = { ["%s"] = "acme/mobile/1" }
function envoy_on_request(handle)
  local key = handle:headers():get("x-api-key")
  if key == nil or keys[key] == nil then
    handle:respond({[":status"] = "401", ["www-authenticate"] = "APIKey"}, "")
  end
end
""" % GOLD.key

# Goals of issue 6 for the tollgate allow path, against the no-op wasm filter.
GOAL_CPU_DELTA_US = 3.0
GOAL_THROUGHPUT_RATIO = 0.9
# Below this busy share of its core, Envoy did not bound the throughput of a round.
ENVOY_BOUND_UTILISATION = 0.9


@dataclass(frozen=True)
class Configuration:
    """A row of the table: a listener, the key it sends and the status it must get."""

    label: str
    listener: str
    headers: dict[str, str] = field(default_factory=dict, hash=False)
    status: int = 200


CONFIGURATIONS = [
    Configuration("bare Envoy", "bare"),
    Configuration("no-op wasm filter", "noop_wasm"),
    Configuration("wasm replaying tollgate's host calls, no logic", "replay_wasm", {"x-api-key": GOLD.key}),
    Configuration("native api_key_auth + local_ratelimit", "native", {"x-api-key": GOLD.key}),
    Configuration("Lua key check", "lua", {"x-api-key": GOLD.key}),
    Configuration("tollgate allow (2 limits)", "tollgate", {"x-api-key": GOLD.key}),
    Configuration("tollgate allow, rate_limit_headers: ietf", "tollgate_ietf", {"x-api-key": GOLD.key}),
    Configuration("tollgate deny 401 (no key)", "tollgate", {}, 401),
    Configuration("tollgate deny 429 (exhausted)", "tollgate", {"x-api-key": EXHAUSTED.key}, 429),
]
BARE, NOOP, REPLAY, TOLLGATE_ALLOW = CONFIGURATIONS[0], CONFIGURATIONS[1], CONFIGURATIONS[2], CONFIGURATIONS[5]
# What the replay row does per request (bench/noop-filter): tollgate's allow-path host calls.
REPLAYED_HOST_CALLS = 10

ROUTES = {"direct_response": e.DIRECT_PATH, "upstream": e.UPSTREAM_PATH}


def listener_filters(tollgate_wasm: Path) -> dict[str, list[dict[str, Any]]]:
    return {
        "bare": [],
        "noop_wasm": [e.wasm_filter("noop", "noop", NOOP_WASM, "")],
        "replay_wasm": [e.wasm_filter("replay", "replay", NOOP_WASM, "replay-tollgate-host-calls")],
        "native": [
            {
                "name": "envoy.filters.http.api_key_auth",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuth",
                    "credentials": [{"key": GOLD.key, "client": GOLD.client_id}],
                    "key_sources": [{"header": "x-api-key"}],
                    # As tollgate does: the upstream learns the client, never the key.
                    "forwarding": {"header": "x-tollgate-client", "hide_credentials": True},
                },
            },
            {
                "name": "envoy.filters.http.local_ratelimit",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
                    "stat_prefix": "bench_local_rate_limit",
                    "token_bucket": {"max_tokens": 1_000_000_000, "tokens_per_fill": 1_000_000_000, "fill_interval": "1s"},
                    "filter_enabled": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}, "runtime_key": "bench_rl_enabled"},
                    "filter_enforced": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}, "runtime_key": "bench_rl_enforced"},
                    # As tollgate does: rate-limit headers on every response.
                    "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
                },
            },
        ],
        "lua": [
            {
                "name": "envoy.filters.http.lua",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                    "default_source_code": {"inline_string": LUA_KEY_CHECK},
                },
            }
        ],
        "tollgate": [e.wasm_filter("tollgate", "tollgate", tollgate_wasm, plugin_configuration([GOLD, EXHAUSTED]))],
        # Its own vm_id: one catalogue per vm_id (the key directory lives in its shared data).
        "tollgate_ietf": [e.wasm_filter("tollgate_ietf", "tollgate", tollgate_wasm, json.dumps({**json.loads(plugin_configuration([GOLD, EXHAUSTED])), "rate_limit_headers": "ietf"}))],
    }


def measured_bootstrap(upstream_port: int, tollgate_wasm: Path) -> dict[str, Any]:
    routes = [
        e.direct_response_route("/orders/direct"),
        {"match": {"prefix": "/orders/upstream"}, "route": {"cluster": "upstream"}},
    ]
    listeners = [e.listener(name, filters, routes) for name, filters in listener_filters(tollgate_wasm).items()]
    return e.bootstrap(listeners, [e.loopback_cluster("upstream", upstream_port)])


@dataclass
class Sample:
    requests_per_s: float
    p99_ms: float
    cpu_us_per_request: float
    cpu_utilisation: float  # Envoy CPU time / wall time of the round


def measure(bench: Bench, measured: e.Envoy, config: Configuration, route: str, seconds: float) -> Sample:
    url = measured.url(config.listener, ROUTES[route])
    before = measured.cpu_ticks()
    result = run_wrk(url, duration_s=seconds, connections=CONNECTIONS, threads=WRK_THREADS, headers=config.headers, cpus=bench.cpus.load)
    ticks = measured.cpu_ticks() - before
    if result.requests == 0:
        raise RuntimeError(f"{config.label} / {route}: wrk completed no request")
    wrong = result.non_2xx_3xx if config.status < 300 else result.requests - result.non_2xx_3xx
    if wrong:
        raise RuntimeError(f"{config.label} / {route}: {wrong} of {result.requests} responses were not {config.status}")
    if result.socket_errors:
        bench.notes.append(f"{config.label} / {route}: wrk saw {result.socket_errors} socket errors in a round")
    cpu_s = ticks / CLOCK_TICKS_PER_S
    return Sample(result.requests_per_s, result.p99_ms, cpu_s * 1e6 / result.requests, cpu_s / result.duration_s)


def check_statuses(measured: e.Envoy) -> None:
    """Every configuration answers what its row says before anything is timed."""
    for config in CONFIGURATIONS:
        for route, path in ROUTES.items():
            status, _ = e.http_get(measured.url(config.listener, path), config.headers)
            if status != config.status:
                raise RuntimeError(f"{config.label} / {route}: expected {config.status}, got {status}")


def run(bench: Bench) -> SectionReport:
    upstream = e.Envoy(
        "upstream",
        e.bootstrap([e.listener("upstream", [], [e.direct_response_route("/")])]),
        bench.workdir,
        concurrency=1,
        cpus=bench.cpus.load,
    ).start(bench.supervisor, bench.envoy_binary)
    bench.log(f"upstream Envoy ready on port {upstream.ports['upstream']}")
    measured = e.Envoy(
        "request-cost",
        measured_bootstrap(upstream.ports["upstream"], bench.tollgate_wasm),
        bench.workdir,
        concurrency=1,
        cpus=bench.cpus.envoy,
    ).start(bench.supervisor, bench.envoy_binary)
    bench.log(f"measured Envoy ready (pid {measured.pid}), listeners {measured.ports}")

    status, _ = e.http_get(measured.url("tollgate", e.DIRECT_PATH), {"x-api-key": EXHAUSTED.key})
    if status != 200:
        raise RuntimeError(f"using up the exhausted contract's one request got {status}")
    check_statuses(measured)

    cells = [(config, route) for config in CONFIGURATIONS for route in ROUTES]
    bench.log(f"warm-up: {len(cells)} cells × {WARMUP_S:.0f}s")
    for config, route in cells:
        measure(bench, measured, config, route, WARMUP_S)

    samples: dict[tuple[Configuration, str], list[Sample]] = {cell: [] for cell in cells}
    for n in range(bench.rounds):
        bench.log(f"round {n + 1}/{bench.rounds}: {len(cells)} cells × {bench.round_seconds:.0f}s")
        for config, route in cells:
            samples[(config, route)].append(measure(bench, measured, config, route, bench.round_seconds))
    if measured.process is not None and measured.process.poll() is not None:
        raise RuntimeError(f"the measured Envoy exited during the rounds:\n{measured.log_tail()}")
    return report(bench, samples)


def paired_delta(samples: dict[tuple[Configuration, str], list[Sample]], a: Configuration, b: Configuration, route: str) -> float:
    """Median over rounds of a's CPU µs/req minus b's in the same round: pairing cancels the
    drift of other work on the machine between rounds."""
    return median(
        [x.cpu_us_per_request - y.cpu_us_per_request for x, y in zip(samples[(a, route)], samples[(b, route)])]
    )


def ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}" if base else "–"


def report(bench: Bench, samples: dict[tuple[Configuration, str], list[Sample]]) -> SectionReport:
    rounds = len(next(iter(samples.values())))
    parts = [
        f"Envoy `--concurrency 1`; wrk `-t{WRK_THREADS} -c{CONNECTIONS}` on loopback, {rounds} interleaved "
        f"round(s) of {bench.round_seconds:.0f} s per configuration after a {WARMUP_S:.0f} s warm-up; medians over "
        "rounds. *CPU µs/req* is the measured Envoy's utime+stime over a round (from /proc/<pid>/stat) divided "
        "by the requests wrk saw served; *×bare* and *×no-op* are ratios to bare Envoy and to the no-op wasm "
        "filter on the same route; *CPU range* is the lowest and highest round; *Envoy CPU* is its busy share "
        "of one core (near 100 % means Envoy, not the load generator, bounded the throughput).",
        "",
    ]
    headlines: list[str] = []
    for route in ROUTES:
        med = {
            config: (
                median([s.requests_per_s for s in samples[(config, route)]]),
                median([s.p99_ms for s in samples[(config, route)]]),
                median([s.cpu_us_per_request for s in samples[(config, route)]]),
            )
            for config in CONFIGURATIONS
        }
        rows = []
        for config in CONFIGURATIONS:
            rps, p99, cpu = med[config]
            cpus = [s.cpu_us_per_request for s in samples[(config, route)]]
            rows.append(
                [
                    config.label,
                    str(config.status),
                    f"{rps:,.0f}",
                    ratio(rps, med[BARE][0]),
                    ratio(rps, med[NOOP][0]),
                    f"{p99:.2f}",
                    ratio(p99, med[BARE][1]),
                    ratio(p99, med[NOOP][1]),
                    f"{cpu:.1f}",
                    ratio(cpu, med[BARE][2]),
                    ratio(cpu, med[NOOP][2]),
                    f"{min(cpus):.1f}–{max(cpus):.1f}",
                    f"{100 * median([s.cpu_utilisation for s in samples[(config, route)]]):.0f} %",
                ]
            )
        title = "`direct_response` route" if route == "direct_response" else "route to a real upstream (an Envoy serving `direct_response`)"
        parts += [
            f"### {title}",
            "",
            table(
                ["configuration", "status", "req/s", "×bare", "×no-op", "p99 ms", "×bare", "×no-op", "CPU µs/req", "×bare", "×no-op", "CPU range", "Envoy CPU"],
                rows,
                align_right_from=1,
            ),
            "",
        ]
        delta = paired_delta(samples, TOLLGATE_ALLOW, NOOP, route)
        host_calls = paired_delta(samples, REPLAY, NOOP, route)
        own_work = paired_delta(samples, TOLLGATE_ALLOW, REPLAY, route)
        parts += [
            f"Where tollgate's {delta:+.1f} µs over the no-op filter goes on this route (paired per-round medians): "
            f"its {REPLAYED_HOST_CALLS} host calls, replayed without logic, cost {host_calls:+.1f} µs "
            f"(≈ {host_calls / REPLAYED_HOST_CALLS:.2f} µs per call); tollgate's own work in the VM "
            f"(key hashing, lookups, window math, allocations) {own_work:+.1f} µs.",
            "",
        ]
        throughput = med[TOLLGATE_ALLOW][0] / med[NOOP][0]
        cpu_verdict = "met" if delta <= GOAL_CPU_DELTA_US else f"missed by {delta - GOAL_CPU_DELTA_US:.1f} µs"
        rps_verdict = "met" if throughput >= GOAL_THROUGHPUT_RATIO else f"missed by {GOAL_THROUGHPUT_RATIO - throughput:.2f}"
        busy = min(median([s.cpu_utilisation for s in samples[(c, route)]]) for c in (NOOP, TOLLGATE_ALLOW))
        if busy < ENVOY_BOUND_UTILISATION:
            rps_verdict += f"; indicative only: Envoy was {100 * busy:.0f} % busy, so the load generator bounded req/s"
        headlines.append(
            f"Request cost, {route} route: tollgate allow costs no-op wasm {delta:+.1f} µs Envoy CPU per request "
            f"(goal ≤ +{GOAL_CPU_DELTA_US:.0f} µs: {cpu_verdict}) at {throughput:.2f}× its throughput "
            f"(goal ≥ {GOAL_THROUGHPUT_RATIO}: {rps_verdict})."
        )
    if bench.notes:
        parts += ["Notes from the run:", "", *[f"- {n}" for n in bench.notes], ""]
    parts += [CODE_NOTES.read_text().strip(), ""]
    return SectionReport("1. Request cost", "\n".join(parts), headlines)
