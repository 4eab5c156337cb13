"""Live mode fails static: when the control plane is killed, or serves a snapshot the gateway
cannot verify, Envoy keeps enforcing the last good snapshot, counts the failure, and picks up
changes again once a good control plane is back on the same data directory.

One control plane and one gateway serve the module; a test that stops or reconfigures the
control plane leaves it running normally again, even when it fails.
"""

from __future__ import annotations

import base64
import hashlib

import time
from typing import Iterator

import pytest

from harness import Envoy, clear_of_window_end, problem, wait_until
from live import (
    CHANGE_DEADLINE_S,
    RECONNECT_DEADLINE_S,
    ControlPlane,
    LiveProcesses,
    answered,
    get,
    snapshot_metrics,
    wait_all_workers_enforce,
)

OUTAGE_S = 30.0  # issue 4: the last snapshot stays enforced for at least this long
ORDERS = "/orders/v1/items"
UNKNOWN_KEY = "tg_never-issued-by-this-control-plane"


class Keys:
    """API keys of the module's clients, one per behaviour."""

    allowed = ""  # contract on a large plan: 200
    stranger = ""  # no contract: 403
    limited = ""  # contract on 3/day, used up: 429


@pytest.fixture(scope="module")
def control_plane(live: LiveProcesses) -> ControlPlane:
    cp = live.control_plane()
    cp.org("acme")
    cp.locked_plan("acme", "gold", "1", (1_000_000, "day"))
    cp.locked_plan("acme", "three", "1", (3, "day"))
    cp.api_version("acme", "orders", "1", "/orders/v1", plans=(("gold", "1"), ("three", "1")))
    Keys.allowed = cp.client_version("acme", "allowed", "1")
    cp.contract("acme/allowed/1", "acme/orders/1", "gold")
    Keys.stranger = cp.client_version("acme", "stranger", "1")
    Keys.limited = cp.client_version("acme", "limited", "1")
    cp.contract("acme/limited/1", "acme/orders/1", "three")
    return cp


@pytest.fixture(scope="module")
def envoy(live: LiveProcesses, control_plane: ControlPlane) -> Envoy:
    envoy = live.gateway(control_plane)
    wait_all_workers_enforce(envoy, control_plane.revision(), deadline_s=30)
    # The module lasts under a minute: keep the 3/day window from turning over meanwhile.
    clear_of_window_end("day")
    for _ in range(3):
        assert get(envoy, ORDERS, Keys.limited).status_code == 200
    return envoy


@pytest.fixture(autouse=True)
def control_plane_restored(control_plane: ControlPlane) -> Iterator[None]:
    """After each test, the control plane runs again with its own secrets."""
    yield
    if not control_plane.running() or control_plane.run_env:
        control_plane.restart()


def enforced(envoy: Envoy) -> dict[str, int]:
    """What callers see, each on a fresh connection (so on either worker)."""
    return {
        "allowed": get(envoy, ORDERS, Keys.allowed).status_code,
        "no key": get(envoy, ORDERS).status_code,
        "unknown key": get(envoy, ORDERS, UNKNOWN_KEY).status_code,
        "no contract": get(envoy, ORDERS, Keys.stranger).status_code,
        "limit used up": get(envoy, ORDERS, Keys.limited).status_code,
    }


LAST_SNAPSHOT = {"allowed": 200, "no key": 401, "unknown key": 401, "no contract": 403, "limit used up": 429}


def test_gateway_keeps_enforcing_the_last_snapshot_while_the_control_plane_is_down(
    control_plane: ControlPlane, envoy: Envoy
) -> None:
    assert enforced(envoy) == LAST_SNAPSHOT
    revision = control_plane.revision()
    before = snapshot_metrics(envoy)
    assert before.revision == revision

    control_plane.kill()
    started, rounds = time.monotonic(), 0
    while time.monotonic() - started < OUTAGE_S:
        assert enforced(envoy) == LAST_SNAPSHOT, f"after {time.monotonic() - started:.1f}s without a control plane"
        rounds += 1
        time.sleep(0.5)
    assert rounds >= 30
    during = snapshot_metrics(envoy)
    # Retried with capped exponential backoff (250 ms doubling to 10 s, jittered down to half):
    # a handful of attempts in 30 s, neither none nor a busy loop.
    failed_polls = during.fetch_errors - before.fetch_errors
    assert 3 <= failed_polls <= 20, f"{failed_polls} failed polls in {OUTAGE_S:.0f}s"
    assert during.revision == revision and during.updates == before.updates
    assert "tollgate poller: snapshot poll failed" in envoy.log()

    control_plane.start()  # same data directory, same port
    assert control_plane.revision() == revision, "the restarted control plane lost committed changes"
    contracts = control_plane.ok("GET", "/v1/orgs/acme/clients/limited/versions/1/contracts")["items"]
    assert [(c["api"], c["plan"]) for c in contracts] == [("orders", "three")]
    assert enforced(envoy) == LAST_SNAPSHOT

    # New changes flow again, once the poller's backoff lets it find the control plane.
    control_plane.contract("acme/stranger/1", "acme/orders/1", "gold")
    answered(envoy, ORDERS, Keys.stranger, 200, RECONNECT_DEADLINE_S)
    wait_all_workers_enforce(envoy, control_plane.revision())
    assert enforced(envoy) == {**LAST_SNAPSHOT, "no contract": 200}, "counts or keys lost across the outage"


def test_snapshot_signed_with_another_key_is_refused_and_the_last_good_one_kept(
    control_plane: ControlPlane, envoy: Envoy
) -> None:
    key = control_plane.client_version("acme", "latecomer", "1")
    answered(envoy, ORDERS, key, 403, CHANGE_DEADLINE_S)
    good_revision = control_plane.revision()
    wait_all_workers_enforce(envoy, good_revision)
    before = snapshot_metrics(envoy)

    # The same catalogue, signed with an Ed25519 key whose public key the gateway does not trust.
    other_key = base64.urlsafe_b64encode(hashlib.sha256(b"another signing key").digest()).decode().rstrip("=")
    control_plane.restart(env={"TOLLGATE_SNAPSHOT_SIGNING_KEY": other_key})
    control_plane.contract("acme/latecomer/1", "acme/orders/1", "gold")
    wait_until(
        lambda: snapshot_metrics(envoy).rejected > before.rejected,
        RECONNECT_DEADLINE_S,
        "the gateway to count a rejected snapshot",
    )
    assert "tollgate poller: refused a snapshot" in envoy.log()
    refusing = time.monotonic()
    while time.monotonic() - refusing < 1.0:  # a few of the gateway's refresh ticks
        refused = get(envoy, ORDERS, key)
        assert refused.status_code == 403, "a snapshot with a wrong signature was enforced"
        time.sleep(0.05)
    assert problem(refused)["status"] == 403
    after = snapshot_metrics(envoy)
    assert after.revision == good_revision and after.updates == before.updates
    assert get(envoy, ORDERS, Keys.allowed).status_code == 200

    # The trusted key again: the change arrives.
    control_plane.restart()
    answered(envoy, ORDERS, key, 200, RECONNECT_DEADLINE_S)
    wait_until(
        lambda: snapshot_metrics(envoy).revision == control_plane.revision(),
        CHANGE_DEADLINE_S,
        "the gateway's revision gauge to catch up",
    )
