"""Quota leases in real Envoy: a worker that reserved part of a window and then fell idle hands
the unused part back on its tick, so the other worker can admit it and the window still
admits exactly its limit — never more, and in the end not less."""

from __future__ import annotations

import http.client
import re
import time

import pytest

from harness import WORKERS, Catalogue, Envoy, api, clear_of_window_end, client, limit, plan, plugin_config, wait_until

LIMIT = 40  # a day; 2 workers reserve at most 40 / 4 = 10 at once
LEASE_KEY = "lease-return-key-0042"

CATALOGUE = Catalogue(
    plans=[plan("acme/forty/1", limit(LIMIT, "day"))],
    apis=[api("acme/orders/1", "/orders/v1")],
    clients=[client("acme/lease/1", LEASE_KEY)],
)
CATALOGUE.contract("acme/lease/1", "acme/orders/1", "acme/forty/1")

WORKER_STAT = r"^listener\.127\.0\.0\.1_\d+\.worker_(\d+)\.downstream_cx_total$"


@pytest.fixture(scope="module")
def envoy(start_envoy, wasm) -> Envoy:
    clear_of_window_end("day")
    return start_envoy(plugin_config(CATALOGUE.snapshot()))


def accepted_per_worker(envoy: Envoy) -> dict[str, int]:
    return {re.match(WORKER_STAT, k).group(1): v for k, v in envoy.stats(WORKER_STAT).items()}


def connection_on_each_worker(envoy: Envoy) -> dict[str, http.client.HTTPConnection]:
    """Keep-alive connections, one accepted by each worker (the kernel spreads them)."""
    found: dict[str, http.client.HTTPConnection] = {}
    spare: list[http.client.HTTPConnection] = []

    def one_more() -> bool:
        before = accepted_per_worker(envoy)
        connection = http.client.HTTPConnection("127.0.0.1", envoy.port, timeout=10)
        connection.request("GET", "/unrouted")  # public path: no key, no counting
        connection.getresponse().read()
        after = wait_until(
            lambda: (a := accepted_per_worker(envoy)) != before and a, 10, "the connection to be counted"
        )
        worker = next(w for w, n in after.items() if n != before.get(w, 0))
        if worker in found:
            spare.append(connection)
        else:
            found[worker] = connection
        return len(found) == WORKERS

    wait_until(one_more, 30, "a connection on every worker", interval_s=0)
    for connection in spare:
        connection.close()
    return found


def call(connection: http.client.HTTPConnection) -> int:
    connection.request("GET", "/orders/v1/items", headers={"x-api-key": LEASE_KEY})
    response = connection.getresponse()
    response.read()
    return response.status


def test_an_idle_workers_reservation_comes_back_and_the_window_admits_exactly_its_limit(
    envoy: Envoy, report_figure
) -> None:
    (first, idle), (other, busy) = sorted(connection_on_each_worker(envoy).items())
    # The idle worker admits one request, reserving a chunk of the day for itself.
    assert call(idle) == 200
    admitted = 1
    held_back_at = None
    started = time.monotonic()

    def busy_worker_took_the_rest() -> bool:
        nonlocal admitted, held_back_at
        status = call(busy)
        if status == 200:
            admitted += 1
        elif held_back_at is None:
            held_back_at = admitted
        assert admitted <= LIMIT, f"{admitted} admitted in a day of {LIMIT}"
        return admitted == LIMIT

    wait_until(busy_worker_took_the_rest, 30, f"{LIMIT} admitted in all", interval_s=0.02)
    returned_after_s = time.monotonic() - started
    # The window is exhausted on both workers now.
    assert call(busy) == 429
    assert call(idle) == 429
    report_figure(
        "lease return",
        f"worker {first} admitted 1 and idled; worker {other} was first refused after {held_back_at} "
        f"admissions in all, reached {LIMIT} after {returned_after_s:.1f} s",
    )
    idle.close()
    busy.close()
