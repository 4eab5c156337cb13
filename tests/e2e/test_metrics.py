"""Metrics: `tollgate_requests_total` by `decision` in Envoy's `/stats/prometheus`, counted
once per request whichever worker served it."""

import time

import pytest
import requests

from harness import (
    Catalogue,
    Envoy,
    api,
    clear_of_window_end,
    client,
    limit,
    plan,
    plugin_config,
    requests_by_decision,
    settled_requests_by_decision,
    wait_until,
)

KEY = "metrics-mobile-key-4d5e"
ONE_A_DAY_KEY = "metrics-one-a-day-key-6f70"
EXPIRED_KEY = "metrics-expired-key-8192"

CATALOGUE = Catalogue(
    plans=[plan("acme/gold/1", limit(10000, "day")), plan("acme/one-a-day/1", limit(1, "day"))],
    apis=[
        api("acme/orders/1", "/orders/v1"),
        api("acme/reports/1", "/reports/v1"),
        api("acme/status/1", "/status/v1", public=True),
        api("acme/legacy/1", "/legacy/v1", status="retired"),
    ],
    clients=[
        client("acme/mobile/1", KEY),
        client("acme/script/1", ONE_A_DAY_KEY),
        client("acme/expired/1", EXPIRED_KEY, expires_at=int(time.time()) - 60),
    ],
)
CATALOGUE.contract("acme/mobile/1", "acme/orders/1", "acme/gold/1")
CATALOGUE.contract("acme/script/1", "acme/orders/1", "acme/one-a-day/1")
CATALOGUE.contract("acme/mobile/1", "acme/legacy/1", "acme/gold/1")


@pytest.fixture(scope="module")
def envoy(start_envoy, wasm) -> Envoy:
    clear_of_window_end("day")
    return start_envoy(plugin_config(CATALOGUE.snapshot(), unmatched="pass"))


def get(envoy: Envoy, path: str, key: str | None = None) -> int:
    headers = {"x-api-key": key} if key else {}
    return requests.get(f"{envoy.url}{path}", headers=headers, timeout=10).status_code


def test_requests_total_is_exported_with_a_decision_label(envoy: Envoy) -> None:
    assert get(envoy, "/orders/v1/x", KEY) == 200
    text = envoy.prometheus()
    assert "tollgate_requests_total" in text, text[-3000:]
    assert "allow" in requests_by_decision(envoy), text[-3000:]


def test_every_decision_is_counted_once(envoy: Envoy) -> None:
    before = settled_requests_by_decision(envoy)
    traffic = [
        ("/orders/v1/a", KEY, 200, "allow"),
        ("/orders/v1/b", KEY, 200, "allow"),
        ("/orders/v1/c", KEY, 200, "allow"),
        ("/orders/v1/d", ONE_A_DAY_KEY, 200, "allow"),
        ("/orders/v1/e", ONE_A_DAY_KEY, 429, "rate_limited"),
        ("/orders/v1/f", ONE_A_DAY_KEY, 429, "rate_limited"),
        ("/status/v1/health", None, 200, "public"),
        ("/elsewhere", None, 200, "unmatched"),
        ("/orders/v1/g", None, 401, "missing_key"),
        ("/orders/v1/h", "metrics-nobody-has-this-key", 401, "invalid_key"),
        ("/orders/v1/i", EXPIRED_KEY, 401, "invalid_key"),
        ("/reports/v1/j", KEY, 403, "no_contract"),
        ("/legacy/v1/k", KEY, 410, "retired"),
    ]
    expected: dict[str, float] = {}
    for path, key, status, decision in traffic:
        assert get(envoy, path, key) == status, path
        expected[decision] = expected.get(decision, 0) + 1

    def increments() -> dict[str, float]:
        after = requests_by_decision(envoy)
        return {d: after.get(d, 0) - before.get(d, 0) for d in set(after) | set(before)}

    def as_expected() -> bool:
        seen = {d: n for d, n in increments().items() if n}
        return seen == expected

    try:
        wait_until(as_expected, 5, "the counters to reflect the traffic")
    except TimeoutError:
        assert {d: n for d, n in increments().items() if n} == expected
