"""API keys and contracts: 401 without a valid key, 403 without a contract, and what the
upstream receives when a request is allowed (identity headers, the key stripped or forwarded)."""

import time
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests

from harness import Catalogue, Envoy, api, client, echoed, limit, plan, plugin_config, problem

MOBILE_KEY = "keys-mobile-key-2f9d0c"
EXPIRED_KEY = "keys-expired-key-88b1"
LATER_KEY = "keys-expires-later-key-0d4e"
UNKNOWN_KEY = "keys-nobody-has-this-key-ee42"
CHALLENGE = 'APIKey realm="tollgate", header="x-api-key"'

NOW = int(time.time())

CATALOGUE = Catalogue(
    plans=[plan("acme/gold/1", limit(10000, "day"))],
    apis=[
        api("acme/orders/1", "/orders/v1"),
        api("acme/billing/1", "/billing/v1", forward_api_key=True),
        api("acme/reports/1", "/reports/v1"),
        api("acme/status/1", "/status/v1", public=True),
        api("acme/open-data/1", "/open/v1", public=True, forward_api_key=True),
    ],
    clients=[
        client("acme/mobile/1", MOBILE_KEY),
        client("acme/expired/1", EXPIRED_KEY, expires_at=NOW - 3600),
        client("acme/rotating/1", LATER_KEY, expires_at=NOW + 30 * 86400),
    ],
)
CATALOGUE.contract("acme/mobile/1", "acme/orders/1", "acme/gold/1")
CATALOGUE.contract("acme/mobile/1", "acme/billing/1", "acme/gold/1")
CATALOGUE.contract("acme/expired/1", "acme/orders/1", "acme/gold/1")
CATALOGUE.contract("acme/rotating/1", "acme/orders/1", "acme/gold/1")


@pytest.fixture(scope="module")
def envoy(start_envoy, wasm) -> Envoy:
    return start_envoy(plugin_config(CATALOGUE.snapshot()))


def get(envoy: Envoy, path: str, **kwargs) -> requests.Response:
    return requests.get(f"{envoy.url}{path}", timeout=10, **kwargs)


def assert_key_not_disclosed(response: requests.Response, key: str) -> None:
    assert key not in response.text
    assert all(key not in value for value in response.headers.values())


# --- refusals ------------------------------------------------------------------------------


def test_private_api_without_key_is_401_with_challenge(envoy: Envoy) -> None:
    response = get(envoy, "/orders/v1/items")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == CHALLENGE
    problem(response)


def test_unknown_key_is_401_and_never_echoed(envoy: Envoy) -> None:
    response = get(envoy, "/orders/v1/items", headers={"x-api-key": UNKNOWN_KEY})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == CHALLENGE
    problem(response)
    assert_key_not_disclosed(response, UNKNOWN_KEY)


def test_unknown_key_in_query_is_401_and_never_echoed(envoy: Envoy) -> None:
    response = get(envoy, f"/orders/v1/items?apikey={UNKNOWN_KEY}")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == CHALLENGE
    assert_key_not_disclosed(response, UNKNOWN_KEY)


def test_expired_key_is_401(envoy: Envoy) -> None:
    response = get(envoy, "/orders/v1/items", headers={"x-api-key": EXPIRED_KEY})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == CHALLENGE
    problem(response)
    assert_key_not_disclosed(response, EXPIRED_KEY)


def test_key_with_future_expiry_is_accepted(envoy: Envoy) -> None:
    body = echoed(get(envoy, "/orders/v1/items", headers={"x-api-key": LATER_KEY}))
    assert body["headers"]["x-tollgate-client"] == "acme/rotating/1"


def test_valid_key_without_contract_for_the_api_is_403(envoy: Envoy) -> None:
    response = get(envoy, "/reports/v1/daily", headers={"x-api-key": MOBILE_KEY})
    assert response.status_code == 403
    problem(response)
    assert_key_not_disclosed(response, MOBILE_KEY)


def test_each_refusal_has_its_own_problem_type(envoy: Envoy) -> None:
    missing = problem(get(envoy, "/orders/v1/items"))
    invalid = problem(get(envoy, "/orders/v1/items", headers={"x-api-key": UNKNOWN_KEY}))
    no_contract = problem(get(envoy, "/reports/v1/daily", headers={"x-api-key": MOBILE_KEY}))
    assert len({missing["type"], invalid["type"], no_contract["type"]}) == 3


# --- allowed requests ----------------------------------------------------------------------


def test_upstream_learns_client_and_plan(envoy: Envoy) -> None:
    body = echoed(get(envoy, "/orders/v1/items", headers={"x-api-key": MOBILE_KEY}))
    assert body["headers"]["x-tollgate-client"] == "acme/mobile/1"
    assert body["headers"]["x-tollgate-plan"] == "acme/gold/1"


def test_forged_identity_headers_are_replaced(envoy: Envoy) -> None:
    forged = {"x-tollgate-client": "acme/admin/1", "x-tollgate-plan": "acme/unlimited/1"}
    body = echoed(get(envoy, "/orders/v1/items", headers={"x-api-key": MOBILE_KEY, **forged}))
    assert body["headers"]["x-tollgate-client"] == "acme/mobile/1"
    assert body["headers"]["x-tollgate-plan"] == "acme/gold/1"


def test_forged_identity_headers_are_removed_on_public_api(envoy: Envoy) -> None:
    forged = {"x-tollgate-client": "acme/admin/1", "x-tollgate-plan": "acme/unlimited/1"}
    body = echoed(get(envoy, "/status/v1/health", headers=forged))
    assert "x-tollgate-client" not in body["headers"]
    assert "x-tollgate-plan" not in body["headers"]


def test_key_is_stripped_before_upstream(envoy: Envoy) -> None:
    body = echoed(get(envoy, "/orders/v1/items", headers={"x-api-key": MOBILE_KEY}))
    assert "x-api-key" not in body["headers"]
    assert MOBILE_KEY not in str(body)


def test_query_key_is_accepted_and_stripped_keeping_other_params(envoy: Envoy) -> None:
    body = echoed(get(envoy, f"/orders/v1/items?colour=red&apikey={MOBILE_KEY}&size=2"))
    assert body["headers"]["x-tollgate-client"] == "acme/mobile/1"
    url = urlsplit(body["path"])
    assert url.path == "/orders/v1/items"
    assert parse_qsl(url.query) == [("colour", "red"), ("size", "2")]
    assert MOBILE_KEY not in str(body)


def test_query_key_alone_leaves_no_query_behind(envoy: Envoy) -> None:
    body = echoed(get(envoy, f"/orders/v1/items?apikey={MOBILE_KEY}"))
    assert urlsplit(body["path"]).path == "/orders/v1/items"
    assert parse_qsl(urlsplit(body["path"]).query) == []


def test_header_key_is_used_before_query_key_and_both_are_stripped(envoy: Envoy) -> None:
    body = echoed(
        get(envoy, f"/orders/v1/items?apikey={UNKNOWN_KEY}", headers={"x-api-key": MOBILE_KEY})
    )
    assert body["headers"]["x-tollgate-client"] == "acme/mobile/1"
    assert "x-api-key" not in body["headers"]
    assert "apikey" not in body["path"]


def test_forward_api_key_keeps_the_key_for_upstream(envoy: Envoy) -> None:
    body = echoed(get(envoy, "/billing/v1/invoices", headers={"x-api-key": MOBILE_KEY}))
    assert body["headers"]["x-api-key"] == MOBILE_KEY
    assert body["headers"]["x-tollgate-client"] == "acme/mobile/1"
    body = echoed(get(envoy, f"/billing/v1/invoices?apikey={MOBILE_KEY}&year=2026"))
    assert parse_qsl(urlsplit(body["path"]).query) == [("apikey", MOBILE_KEY), ("year", "2026")]


def test_public_api_strips_a_key_sent_anyway(envoy: Envoy) -> None:
    body = echoed(get(envoy, f"/status/v1/health?apikey={MOBILE_KEY}&x=1", headers={"x-api-key": MOBILE_KEY}))
    assert "x-api-key" not in body["headers"]
    assert parse_qsl(urlsplit(body["path"]).query) == [("x", "1")]


def test_public_api_with_forward_api_key_keeps_the_key(envoy: Envoy) -> None:
    body = echoed(get(envoy, "/open/v1/datasets", headers={"x-api-key": UNKNOWN_KEY}))
    assert body["headers"]["x-api-key"] == UNKNOWN_KEY


def test_public_api_ignores_an_unknown_key(envoy: Envoy) -> None:
    assert echoed(get(envoy, "/status/v1/health", headers={"x-api-key": UNKNOWN_KEY}))


def test_method_and_body_reach_upstream_on_allowed_requests(envoy: Envoy) -> None:
    response = requests.post(
        f"{envoy.url}/orders/v1/items", headers={"x-api-key": MOBILE_KEY}, data=b"x" * 5000, timeout=10
    )
    body = echoed(response)
    assert body["method"] == "POST"
    assert body["body_length"] == 5000


def test_every_copy_of_the_query_key_is_stripped(envoy: Envoy) -> None:
    body = echoed(get(envoy, f"/orders/v1/items?apikey={MOBILE_KEY}&a=1&apikey={UNKNOWN_KEY}"))
    assert body["headers"]["x-tollgate-client"] == "acme/mobile/1"
    assert parse_qsl(urlsplit(body["path"]).query) == [("a", "1")]
