"""Live mode before the first snapshot: a gateway whose control plane is down answers 503
(failure_mode "closed", the default) or passes requests through unchecked ("open"), and
enforces the catalogue as soon as the control plane appears.

The module's control plane holds a catalogue but is down when each test starts its gateway.
"""

from __future__ import annotations

import time

import pytest

from harness import Envoy, echoed, problem, wait_until
from live import (
    RECONNECT_DEADLINE_S,
    ControlPlane,
    LiveProcesses,
    answered,
    get,
    snapshot_metrics,
    wait_all_workers_enforce,
)

ORDERS = "/orders/v1/items"


class Keys:
    allowed = ""


@pytest.fixture(scope="module")
def control_plane(live: LiveProcesses) -> ControlPlane:
    cp = live.control_plane()
    cp.org("acme")
    cp.locked_plan("acme", "gold", "1", (1_000_000, "day"))
    cp.api_version("acme", "orders", "1", "/orders/v1", plans=(("gold", "1"),))
    Keys.allowed = cp.client_version("acme", "allowed", "1")
    cp.contract("acme/allowed/1", "acme/orders/1", "gold")
    return cp


@pytest.fixture
def control_plane_down(control_plane: ControlPlane) -> ControlPlane:
    control_plane.kill()
    return control_plane


def wait_for_failed_polls(envoy: Envoy) -> None:
    """The poller has tried the control plane and failed (so the gateway really had nothing)."""
    wait_until(lambda: snapshot_metrics(envoy).fetch_errors > 0, 30, "a failed snapshot poll")


def test_gateway_started_before_its_control_plane_answers_503_until_it_appears(
    live: LiveProcesses, control_plane_down: ControlPlane
) -> None:
    envoy = live.gateway(control_plane_down, failure_mode="closed")
    wait_for_failed_polls(envoy)
    waiting = time.monotonic()
    while time.monotonic() - waiting < 1.0:
        for key in (Keys.allowed, None):
            refused = get(envoy, ORDERS, key)
            assert refused.status_code == 503, refused.text
        assert get(envoy, "/not-an-api").status_code == 503
        time.sleep(0.05)
    body = problem(refused)
    assert body["status"] == 503 and "configuration" in body["detail"], body
    assert snapshot_metrics(envoy).updates == 0

    control_plane_down.start()
    answered(envoy, ORDERS, Keys.allowed, 200, RECONNECT_DEADLINE_S)
    wait_all_workers_enforce(envoy, control_plane_down.revision())
    assert get(envoy, ORDERS).status_code == 401
    assert get(envoy, "/not-an-api").status_code == 200  # unmatched: pass
    assert snapshot_metrics(envoy).revision == control_plane_down.revision()


def test_failure_mode_open_passes_requests_through_before_the_first_snapshot(
    live: LiveProcesses, control_plane_down: ControlPlane
) -> None:
    envoy = live.gateway(control_plane_down, failure_mode="open")
    wait_for_failed_polls(envoy)
    passed = echoed(get(envoy, ORDERS))  # a private API, no key: unchecked while unconfigured
    assert passed["path"] == ORDERS
    assert "x-tollgate-client" not in passed["headers"]
    assert get(envoy, ORDERS, Keys.allowed).status_code == 200

    control_plane_down.start()
    answered(envoy, ORDERS, None, 401, RECONNECT_DEADLINE_S)
    wait_all_workers_enforce(envoy, control_plane_down.revision())
    assert echoed(get(envoy, ORDERS, Keys.allowed))["headers"]["x-tollgate-client"] == "acme/allowed/1"
