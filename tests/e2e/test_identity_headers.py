"""No caller-sent `x-tollgate-*` header reaches the upstream on any path that forwards (DESIGN
§2): matched or unmatched, public or private, configured or not (`failure_mode: open`). The
echo upstream shows what arrived. With `forward_api_key`, only the credential that was checked
goes on."""

from __future__ import annotations

import http.client
import json
from typing import Any

import pytest

from harness import Catalogue, Envoy, api, client, limit, plan, plugin_config
from live import ControlPlane, LiveProcesses, snapshot_metrics
from harness import wait_until

GOLD_KEY = "identity-gold-key-7c1e55"
UNCHECKED_KEY = "identity-unchecked-key-d04b"

CATALOGUE = Catalogue(
    plans=[plan("acme/gold/1", limit(10000, "day"))],
    apis=[
        api("acme/orders/1", "/orders/v1"),
        api("acme/billing/1", "/billing/v1", forward_api_key=True),
        api("acme/status/1", "/status/v1", public=True),
    ],
    clients=[client("acme/mobile/1", GOLD_KEY)],
)
CATALOGUE.contract("acme/mobile/1", "acme/orders/1", "acme/gold/1")
CATALOGUE.contract("acme/mobile/1", "acme/billing/1", "acme/gold/1")

# Known names, a name tollgate may add later, and a repeat: every one must go.
FORGED = [
    ("x-tollgate-client", "acme/admin/1"),
    ("x-tollgate-plan", "acme/unlimited/1"),
    ("x-tollgate-subject", "root"),
    ("x-tollgate-operation", "deleteEverything"),
    ("X-Tollgate-Client", "acme/second/1"),
]


def send(envoy: Envoy, target: str, headers: list[tuple[str, str]]) -> tuple[int, Any]:
    """GET with these headers in order, repeats kept (a dict could not send them); the echo
    upstream's JSON when the request got through."""
    connection = http.client.HTTPConnection("127.0.0.1", envoy.port, timeout=10)
    try:
        connection.putrequest("GET", target, skip_accept_encoding=True)
        for name, value in headers:
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        body = response.read()
        return response.status, json.loads(body) if response.status == 200 else body
    finally:
        connection.close()


def own_headers(echo: dict[str, Any]) -> dict[str, str]:
    return {k: v for k, v in echo["headers"].items() if k.startswith("x-tollgate-")}


@pytest.fixture(scope="module")
def envoy(start_envoy, wasm) -> Envoy:
    return start_envoy(plugin_config(CATALOGUE.snapshot(), unmatched="pass"))


def test_unmatched_pass_forwards_no_forged_header_and_no_key(envoy: Envoy) -> None:
    status, echo = send(envoy, f"/internal/admin?apikey={GOLD_KEY}&x=1", [*FORGED, ("x-api-key", GOLD_KEY)])
    assert status == 200, echo
    assert own_headers(echo) == {}, echo
    assert "x-api-key" not in echo["headers"]
    assert echo["path"] == "/internal/admin?x=1"


def test_public_api_forwards_no_forged_header(envoy: Envoy) -> None:
    status, echo = send(envoy, "/status/v1/health", FORGED)
    assert status == 200, echo
    assert own_headers(echo) == {}, echo


def test_private_api_forwards_only_tollgates_identity(envoy: Envoy) -> None:
    status, echo = send(envoy, "/orders/v1/items", [*FORGED, ("x-api-key", GOLD_KEY)])
    assert status == 200, echo
    assert own_headers(echo) == {"x-tollgate-client": "acme/mobile/1", "x-tollgate-plan": "acme/gold/1"}, echo


def test_forward_api_key_forwards_only_the_checked_header_value(envoy: Envoy) -> None:
    status, echo = send(
        envoy,
        f"/billing/v1/invoices?apikey={UNCHECKED_KEY}&month=5",
        [("x-api-key", GOLD_KEY), ("x-api-key", UNCHECKED_KEY)],
    )
    assert status == 200, echo
    assert echo["headers"]["x-api-key"] == GOLD_KEY, echo
    assert UNCHECKED_KEY not in json.dumps(echo)
    assert echo["path"] == "/billing/v1/invoices?month=5"


def test_forward_api_key_forwards_only_the_checked_query_parameter(envoy: Envoy) -> None:
    status, echo = send(envoy, f"/billing/v1/invoices?apikey={GOLD_KEY}&apikey={UNCHECKED_KEY}", [])
    assert status == 200, echo
    assert echo["path"] == f"/billing/v1/invoices?apikey={GOLD_KEY}"


@pytest.fixture(scope="module")
def control_plane_down(live: LiveProcesses) -> ControlPlane:
    cp = live.control_plane()
    cp.org("acme")
    cp.kill()
    return cp


def test_failure_mode_open_forwards_no_forged_header_and_no_key(live: LiveProcesses, control_plane_down: ControlPlane) -> None:
    gateway = live.gateway(control_plane_down, failure_mode="open")
    wait_until(lambda: snapshot_metrics(gateway).fetch_errors > 0, 30, "a failed snapshot poll")
    status, echo = send(gateway, f"/orders/v1/items?apikey={GOLD_KEY}", [*FORGED, ("x-api-key", GOLD_KEY)])
    assert status == 200, echo  # unchecked: no configuration yet
    assert own_headers(echo) == {}, echo
    assert "x-api-key" not in echo["headers"]
    assert echo["path"] == "/orders/v1/items"
