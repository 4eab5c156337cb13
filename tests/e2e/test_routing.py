"""Which API version a request belongs to: host, then longest path prefix on a segment
boundary; public APIs, retired versions, and requests that match no API (`unmatched: pass`)."""

from urllib.parse import parse_qsl, urlsplit

import pytest
import requests

from harness import Catalogue, Envoy, api, client, echoed, limit, plan, plugin_config, problem, raw_get

KEY = "routing-mobile-key-7c1e"

CATALOGUE = Catalogue(
    plans=[plan("acme/gold/1", limit(10000, "day"))],
    apis=[
        api("acme/orders/1", "/orders/v1"),
        api("acme/docs/1", "/orders/v1/docs", public=True),
        api("acme/status/1", "/status/v1", public=True),
        # Same prefix twice: the version bound to shop.acme.test wins for that host.
        api("acme/storefront/1", "/catalog/v1", public=True, hosts=("shop.acme.test",)),
        api("acme/catalog/1", "/catalog/v1"),
        api("acme/legacy/1", "/legacy/v1", status="retired"),
        api("acme/old-status/1", "/old-status/v1", public=True, status="retired"),
    ],
    clients=[client("acme/mobile/1", KEY)],
).contract("acme/mobile/1", "acme/orders/1", "acme/gold/1").contract(
    "acme/mobile/1", "acme/legacy/1", "acme/gold/1"
)


@pytest.fixture(scope="module")
def envoy(start_envoy, wasm) -> Envoy:
    return start_envoy(plugin_config(CATALOGUE.snapshot(), unmatched="pass"))


def get(envoy: Envoy, path: str, **kwargs) -> requests.Response:
    return requests.get(f"{envoy.url}{path}", timeout=10, **kwargs)


def test_public_api_reaches_upstream_without_key(envoy: Envoy) -> None:
    body = echoed(get(envoy, "/status/v1/health?verbose=1"))
    assert body["path"] == "/status/v1/health?verbose=1"


@pytest.mark.parametrize("path", ["/orders/v1", "/orders/v1/", "/orders/v1/items/42"])
def test_prefix_matches_its_path_and_everything_below(envoy: Envoy, path: str) -> None:
    assert get(envoy, path).status_code == 401
    assert echoed(get(envoy, path, headers={"x-api-key": KEY}))["path"] == path


@pytest.mark.parametrize("path", ["/orders/v1-admin", "/orders/v10", "/orders/v1.json", "/orders"])
def test_prefix_never_matches_inside_a_path_segment(envoy: Envoy, path: str) -> None:
    # No API matches: with `unmatched: pass` the request reaches upstream without a key.
    assert echoed(get(envoy, path))["path"] == path


def test_longest_prefix_wins(envoy: Envoy) -> None:
    assert echoed(get(envoy, "/orders/v1/docs/index.html"))["path"] == "/orders/v1/docs/index.html"
    assert get(envoy, "/orders/v1/docsx").status_code == 401


def test_host_specific_api_wins_for_its_host(envoy: Envoy) -> None:
    assert echoed(get(envoy, "/catalog/v1/items", headers={"host": "shop.acme.test"}))
    assert get(envoy, "/catalog/v1/items", headers={"host": "other.acme.test"}).status_code == 401
    assert get(envoy, "/catalog/v1/items").status_code == 401


@pytest.mark.parametrize("host", ["shop.acme.test:8443", "SHOP.Acme.Test"])
def test_host_match_ignores_port_and_case(envoy: Envoy, host: str) -> None:
    assert echoed(get(envoy, "/catalog/v1/items", headers={"host": host}))


def test_host_specific_api_does_not_serve_other_hosts(envoy: Envoy) -> None:
    response = get(envoy, "/catalog/v1/items", headers={"host": "other.acme.test", "x-api-key": KEY})
    # The any-host version applies: the client has no contract for it.
    assert response.status_code == 403


def test_unmatched_request_passes_with_only_tollgates_credentials_removed(envoy: Envoy) -> None:
    # DESIGN: on pass, tollgate's own key header and parameter are still removed (a key sent to
    # a path no API names must not reach an upstream unchecked); everything else is kept.
    response = get(
        envoy,
        "/elsewhere/thing?apikey=abc&colour=red",
        headers={"x-api-key": "some-other-systems-key", "x-custom": "kept"},
    )
    body = echoed(response)
    assert urlsplit(body["path"]).path == "/elsewhere/thing"
    assert parse_qsl(urlsplit(body["path"]).query) == [("colour", "red")]
    assert "x-api-key" not in body["headers"]
    assert body["headers"]["x-custom"] == "kept"
    assert "x-ratelimit-limit" not in {name.lower() for name in response.headers}


def test_retired_private_api_is_410_even_with_a_contract(envoy: Envoy) -> None:
    response = get(envoy, "/legacy/v1/orders", headers={"x-api-key": KEY})
    assert response.status_code == 410
    problem(response)


def test_retired_public_api_is_410(envoy: Envoy) -> None:
    response = get(envoy, "/old-status/v1/health")
    assert response.status_code == 410
    problem(response)


@pytest.mark.parametrize(
    "target",
    ["/status/v1/../../orders/v1/items", "//orders/v1/items", "/status/v1/./../../orders//v1/items"],
)
def test_path_tricks_cannot_route_around_a_private_api(envoy: Envoy, target: str) -> None:
    # Envoy normalises the path before the filter sees it, so these are /orders/v1/items.
    response = raw_get(envoy, target)
    assert response.status == 401, response.body
