"""`unmatched: "deny"`: a request that matches no published API version is answered 404."""

import pytest
import requests

from harness import (
    Catalogue,
    Envoy,
    api,
    client,
    echoed,
    limit,
    plan,
    plugin_config,
    problem,
    requests_by_decision,
    settled_requests_by_decision,
    wait_until,
)

KEY = "deny-mobile-key-51aa"

CATALOGUE = Catalogue(
    plans=[plan("acme/gold/1", limit(10000, "day"))],
    apis=[api("acme/orders/1", "/orders/v1"), api("acme/status/1", "/status/v1", public=True)],
    clients=[client("acme/mobile/1", KEY)],
).contract("acme/mobile/1", "acme/orders/1", "acme/gold/1")


@pytest.fixture(scope="module")
def envoy(start_envoy, wasm) -> Envoy:
    return start_envoy(plugin_config(CATALOGUE.snapshot(), unmatched="deny"))


@pytest.mark.parametrize("path", ["/", "/elsewhere", "/orders/v1-admin", "/status"])
def test_unmatched_request_is_404_problem(envoy: Envoy, path: str) -> None:
    response = requests.get(f"{envoy.url}{path}", headers={"x-api-key": KEY}, timeout=10)
    assert response.status_code == 404
    problem(response)


def test_matched_requests_still_pass_when_unmatched_is_denied(envoy: Envoy) -> None:
    assert echoed(requests.get(f"{envoy.url}/status/v1/health", timeout=10))
    assert echoed(requests.get(f"{envoy.url}/orders/v1/1", headers={"x-api-key": KEY}, timeout=10))


def test_denied_unmatched_requests_are_counted_as_no_route(envoy: Envoy) -> None:
    before = settled_requests_by_decision(envoy).get("no_route", 0)
    for _ in range(3):
        assert requests.get(f"{envoy.url}/nowhere", timeout=10).status_code == 404
    wait_until(lambda: requests_by_decision(envoy).get("no_route", 0) - before == 3, 5, "no_route +3")
