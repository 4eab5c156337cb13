"""Counting is exact across Envoy's worker threads: many concurrent connections firing more
than L requests at a contract with limit L get exactly L admitted and the rest 429."""

import http.client
import threading
from collections import Counter

import pytest

from harness import WORKERS, Catalogue, Envoy, api, clear_of_window_end, client, limit, plan, plugin_config

CONNECTIONS = 64
REQUESTS_PER_CONNECTION = 4  # 256 requests in all, well over every limit below

CATALOGUE = Catalogue(
    plans=[
        plan("acme/hundred-a-day/1", limit(100, "day")),
        # Both limits count every admission; the month one binds.
        plan("acme/two-limits/1", limit(80, "day"), limit(60, "month")),
    ],
    apis=[api("acme/orders/1", "/orders/v1")],
    clients=[
        client("acme/burst-one/1", "exact-burst-one-key-11"),
        client("acme/burst-two/1", "exact-burst-two-key-22"),
    ],
)
CATALOGUE.contract("acme/burst-one/1", "acme/orders/1", "acme/hundred-a-day/1")
CATALOGUE.contract("acme/burst-two/1", "acme/orders/1", "acme/two-limits/1")


@pytest.fixture(scope="module")
def envoy(start_envoy, wasm) -> Envoy:
    clear_of_window_end("day")
    return start_envoy(plugin_config(CATALOGUE.snapshot()))


def burst(envoy: Envoy, key: str) -> Counter[int | str]:
    """CONNECTIONS threads, each on its own keep-alive connection, released together."""
    start = threading.Barrier(CONNECTIONS)
    outcomes: Counter[int | str] = Counter()
    lock = threading.Lock()

    def fire() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", envoy.port, timeout=30)
        seen: list[int | str] = []
        try:
            connection.connect()
            start.wait(timeout=30)
            for n in range(REQUESTS_PER_CONNECTION):
                connection.request("GET", f"/orders/v1/items/{n}", headers={"x-api-key": key})
                response = connection.getresponse()
                response.read()
                seen.append(response.status)
        except Exception as error:  # noqa: BLE001 - every failure is counted and reported
            seen.append(f"{type(error).__name__}: {error}")
        finally:
            connection.close()
            with lock:
                outcomes.update(seen)

    threads = [threading.Thread(target=fire) for _ in range(CONNECTIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a client thread hung"
    return outcomes


@pytest.mark.parametrize(
    ("key", "admitted"),
    [("exact-burst-one-key-11", 100), ("exact-burst-two-key-22", 60)],
    ids=["one-limit-100-a-day", "two-limits-60-a-month-binds"],
)
def test_concurrent_burst_admits_exactly_the_limit(envoy: Envoy, key: str, admitted: int) -> None:
    outcomes = burst(envoy, key)
    total = CONNECTIONS * REQUESTS_PER_CONNECTION
    assert outcomes == Counter({200: admitted, 429: total - admitted}), outcomes


def test_burst_was_spread_over_both_workers(envoy: Envoy) -> None:
    per_worker = envoy.stats(r"^listener\.127\.0\.0\.1_\d+\.worker_\d+\.downstream_cx_total$")
    assert len(per_worker) == WORKERS, per_worker
    assert all(count > 0 for count in per_worker.values()), per_worker
