"""Issue 6 part 3 — propagation.

The real control plane and an Envoy with 2 workers started from `tollgate envoy-config` (live
mode: one poller long-polling, workers reading the shared key directory). One client version
holds a key; the bench alternately creates and deletes its contract through the HTTP API and,
from the moment the API answers 2xx, polls the gateway over one kept-alive connection per
worker until each worker answers the new way (200 after a creation, 403 after a deletion).
"""

from __future__ import annotations

import random
import time

from . import live
from .context import Bench
from .report import SectionReport, table

WORKERS = 2
PATH = "/orders/v1/items"
CHANGE_DEADLINE_S = 10.0
GOAL_P99_MS = 200.0


def percentile(samples: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(samples)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


def run(bench: Bench) -> SectionReport:
    changes = 10 if bench.quick else 120
    control_plane = live.ControlPlane(bench, "propagation-cp").start()
    control_plane.seed("acme", "gold", [(1_000_000_000, "day"), (10**12, "month")], "orders", "/orders/v1")
    key = control_plane.client_version("acme", "propagation")
    upstream = live.upstream(bench)
    gateway = live.gateway(bench, control_plane.url, "propagation-envoy", upstream.ports["upstream"], WORKERS, cpus=None)
    gateway.start(bench.supervisor, bench.envoy_binary)
    connections = live.worker_connections(gateway, WORKERS)
    bench.log(f"propagation: gateway ready ({WORKERS} workers), control plane on {control_plane.port}")

    def wait_all(expected: int, since: float) -> list[float]:
        seen: dict[int, float] = {}
        while len(seen) < len(connections):
            for worker, connection in enumerate(connections):
                if worker in seen:
                    continue
                status = live.status_of(connection, PATH, key)
                elapsed = time.monotonic() - since
                if status == expected:
                    seen[worker] = elapsed
                elif elapsed > CHANGE_DEADLINE_S:
                    raise RuntimeError(f"worker {worker} still answers {status}, not {expected}, {elapsed:.1f}s after the change")
        return [seen[w] for w in sorted(seen)]

    wait_all(403, time.monotonic())  # a known key without a contract, on every worker
    first: list[float] = []
    every: list[float] = []
    write: list[float] = []
    contract_id = 0
    for change in range(changes):
        # A random phase against the workers' 20 ms refresh tick, so the changes sample all of it.
        time.sleep(random.uniform(0, 0.025))
        sent = time.monotonic()
        creating = change % 2 == 0
        if creating:
            contract_id = control_plane.contract("acme", "propagation", "orders", "gold")
        else:
            control_plane.delete_contract("acme", "propagation", contract_id)
        acknowledged = time.monotonic()
        seen = wait_all(200 if creating else 403, acknowledged)
        first.append(min(seen) * 1000)
        every.append(max(seen) * 1000)
        write.append((acknowledged - sent) * 1000)

    def row(label: str, ms: list[float]) -> list[str]:
        return [label, f"{percentile(ms, 50):.1f}", f"{percentile(ms, 99):.1f}", f"{max(ms):.1f}"]

    p99 = percentile(every, 99)
    verdict = "met" if p99 <= GOAL_P99_MS else f"missed by {p99 - GOAL_P99_MS:.0f} ms"
    markdown = "\n".join(
        [
            f"The real control plane (`tollgate serve`, SQLite, {live.tollgate_binary(bench).parent.name} build) and an Envoy "
            f"`--concurrency {WORKERS}` from `tollgate envoy-config` (live mode, one poller long-polling, 20 ms worker "
            f"refresh tick), not pinned. {changes} changes through the HTTP API, alternately creating and deleting one "
            "contract (a random 0–25 ms pause before each); after each 2xx the bench polls `GET "
            f"{PATH}` with the client's key over one kept-alive connection per worker (found from Envoy's per-worker "
            "listener stats) until each worker answers the new way (200 after a creation, 403 after a deletion). "
            "Latencies in ms, nearest-rank percentiles.",
            "",
            table(
                ["from", "p50 ms", "p99 ms", "max ms"],
                [
                    row("the control plane's 2xx to the first worker enforcing", first),
                    row(f"the control plane's 2xx to all {WORKERS} workers enforcing", every),
                    row("the API request sent to its 2xx (durable write + snapshot render)", write),
                ],
            ),
        ]
    )
    headline = (
        f"Propagation: a change is enforced by both workers {percentile(every, 50):.0f} ms (p50) / {p99:.0f} ms (p99) "
        f"after the control plane's 2xx over {changes} changes (goal p99 ≤ {GOAL_P99_MS:.0f} ms: {verdict})."
    )
    for connection in connections:
        connection.close()
    return SectionReport("3. Propagation", markdown, [headline])
