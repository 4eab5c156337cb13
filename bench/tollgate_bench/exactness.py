"""Issue 6 part 2 — exactness under concurrency.

Envoy with 2 workers; wrk with many connections fires far more requests than a contract's
limit L at that one contract, all at once. Counting is exact when exactly L requests got 200
(and tollgate's own allow counter says L), every other one 429. Each trial uses a contract of
its own, so trials are independent within one Envoy. The CAS retries the filter counted
(`tollgate_cas_retries_total`) show how hard the workers fought over the counter.
"""

from __future__ import annotations

import datetime as dt
import time

from . import envoy as e
from .catalogue import NEVER_BINDS, Contract, plugin_configuration
from .context import Bench
from .processes import wait_until
from .report import SectionReport, table
from .wrk import STATUSES, run_wrk

WORKERS = 2
CONNECTIONS = 256
WRK_THREADS = 2


def contracts(limit: int, trials: int) -> list[Contract]:
    # Two limits, as a real plan has: the day one binds, the month one counts along.
    return [
        Contract(100 + n, f"acme/burst-{n}/1", f"bench-burst-key-{n:02d}-0123456789", f"acme/burst-{n}/1", ((limit, "day"), (NEVER_BINDS, "month")))
        for n in range(trials)
    ]


def seconds_to_utc_midnight() -> float:
    now = dt.datetime.now(dt.timezone.utc)
    tomorrow = (now + dt.timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return (tomorrow - now).total_seconds()


def clear_of_day_end(bench: Bench, margin_s: float) -> None:
    """A trial must not straddle a UTC day boundary (the day window would reset mid-count)."""
    remaining = seconds_to_utc_midnight()
    if remaining >= margin_s:
        return
    bench.log(f"waiting {remaining:.0f}s for the next UTC day so the trials fit in one day window")
    target = time.time() + remaining + 1
    wait_until(lambda: time.time() >= target, margin_s + 10, "the next UTC day", interval_s=0.5)


def run(bench: Bench) -> SectionReport:
    limit = 1_000 if bench.quick else 10_000
    duration_s = 2.0 if bench.quick else 6.0
    trials = 1 if bench.quick else 3
    burst = contracts(limit, trials)
    clear_of_day_end(bench, margin_s=trials * (duration_s + 15) + 30)

    routes = [e.direct_response_route("/orders")]
    listener = e.listener("tollgate", [e.wasm_filter("tollgate", "tollgate", bench.tollgate_wasm, plugin_configuration(burst))], routes)
    # Not pinned: both workers and wrk's threads share the machine's cores, which is the point.
    envoy = e.Envoy("exactness", e.bootstrap([listener]), bench.workdir, concurrency=WORKERS, cpus=None)
    envoy.start(bench.supervisor, bench.envoy_binary)
    bench.log(f"exactness Envoy ready ({WORKERS} workers), port {envoy.ports['tollgate']}")

    rows = []
    exact_all = True
    retries_before = 0.0
    allowed_before = 0.0
    for contract in burst:
        result = run_wrk(
            envoy.url("tollgate", "/orders/burst"),
            duration_s=duration_s,
            connections=CONNECTIONS,
            threads=WRK_THREADS,
            headers={"x-api-key": contract.key},
            script=STATUSES,
        )
        metrics = envoy.prometheus()
        retries = e.prometheus_value(metrics, "tollgate_cas_retries_total") - retries_before
        allowed = e.prometheus_value(metrics, "tollgate_requests_total", {"decision": "allow"}) - allowed_before
        retries_before += retries
        allowed_before += allowed
        ok, limited, other = result.statuses[200], result.statuses[429], result.statuses["other"]
        reached = limited > 0
        exact = reached and ok == limit and int(allowed) == limit and other == 0
        exact_all = exact_all and exact
        verdict = "exact" if exact else ("limit not reached: run longer" if not reached else "NOT exact")
        rows.append(
            [
                contract.client_id,
                f"{limit:,}",
                f"{result.requests:,}",
                f"{ok:,}",
                f"{limited:,}",
                f"{other + result.socket_errors:,}",
                f"{int(allowed):,}",
                f"{int(retries):,}",
                verdict,
            ]
        )
        bench.log(f"exactness {contract.client_id}: {ok} × 200, {limited} × 429, {int(retries)} CAS retries — {verdict}")

    workers = envoy.stats(r"^listener\.127\.0\.0\.1_\d+\.worker_\d+\.downstream_cx_total$")
    spread = ", ".join(f"{name.split('.')[-2]} {count}" for name, count in sorted(workers.items()))
    markdown = "\n".join(
        [
            f"Envoy `--concurrency {WORKERS}`; per trial, wrk `-t{WRK_THREADS} -c{CONNECTIONS}` for {duration_s:.0f} s at one "
            f"contract whose plan allows L = {limit:,} requests a day and 10^12 a month (a fresh contract per trial); "
            "statuses counted by wrk (bench/wrk/statuses.lua), admissions and CAS retries from Envoy's "
            "`/stats/prometheus` (`tollgate_requests_total{decision=\"allow\"}`, `tollgate_cas_retries_total`).",
            "",
            table(["contract", "limit L", "requests", "200", "429", "other/errors", "allow counter", "CAS retries", "verdict"], rows),
            "",
            f"Connections per worker: {spread}.",
        ]
    )
    headline = (
        f"Exactness: {len(burst)} burst(s) of {CONNECTIONS} connections over {WORKERS} workers admitted exactly L = {limit:,} each."
        if exact_all
        else f"Exactness: NOT every burst admitted exactly L = {limit:,}; see section 2."
    )
    return SectionReport("2. Exactness under concurrency", markdown, [headline])
