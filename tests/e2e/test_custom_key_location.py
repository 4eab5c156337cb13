"""`key_header` and `key_query_param` move where the filter looks for the key."""

from urllib.parse import parse_qsl, urlsplit

import pytest
import requests

from harness import Catalogue, Envoy, api, client, echoed, limit, plan, plugin_config

KEY = "custom-location-key-90ab"

CATALOGUE = Catalogue(
    plans=[plan("acme/gold/1", limit(10000, "day"))],
    apis=[api("acme/orders/1", "/orders/v1")],
    clients=[client("acme/mobile/1", KEY)],
).contract("acme/mobile/1", "acme/orders/1", "acme/gold/1")


@pytest.fixture(scope="module")
def envoy(start_envoy, wasm) -> Envoy:
    return start_envoy(plugin_config(CATALOGUE.snapshot(), key_header="x-acme-key", key_query_param="token"))


def get(envoy: Envoy, path: str, **kwargs) -> requests.Response:
    return requests.get(f"{envoy.url}{path}", timeout=10, **kwargs)


def test_configured_header_carries_the_key_and_is_stripped(envoy: Envoy) -> None:
    body = echoed(get(envoy, "/orders/v1/1", headers={"x-acme-key": KEY}))
    assert body["headers"]["x-tollgate-client"] == "acme/mobile/1"
    assert "x-acme-key" not in body["headers"]


def test_configured_query_param_carries_the_key_and_is_stripped(envoy: Envoy) -> None:
    body = echoed(get(envoy, f"/orders/v1/1?token={KEY}&q=1"))
    assert body["headers"]["x-tollgate-client"] == "acme/mobile/1"
    assert parse_qsl(urlsplit(body["path"]).query) == [("q", "1")]


def test_default_locations_are_not_read_when_configured_otherwise(envoy: Envoy) -> None:
    assert get(envoy, "/orders/v1/1", headers={"x-api-key": KEY}).status_code == 401
    assert get(envoy, f"/orders/v1/1?apikey={KEY}").status_code == 401


def test_challenge_names_the_configured_header(envoy: Envoy) -> None:
    response = get(envoy, "/orders/v1/1")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'APIKey realm="tollgate", header="x-acme-key"'
