"""A network that recorded the control plane's signed answers replays them to a gateway
(issue 18 item 3): the real control plane and a real Envoy, with tests/e2e/fault_proxy.py
between the poller and the control plane. The proxy records authentic answers and later
answers every poll with one of them, without asking the control plane.

A gateway never goes back: a full snapshot of an older revision and a delta from another
revision are refused, logged and counted (`tollgate_snapshot_replayed_total`, within
`tollgate_snapshot_rejected_total`), and what the newer revision changed (a revoked contract, a
key rotated out with grace 0, its successor) stays in force. A gateway that has just started
(no revision yet) refuses an answer signed longer ago than `max_snapshot_age_seconds`.
"""

from __future__ import annotations

import time
from typing import Callable, Iterator

import pytest
import requests

from fault_proxy import FaultProxy, Recorded
from harness import Envoy, problem, wait_until
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

ORDERS = "/orders/v1/items"
POLL_TIMEOUT_S = 1  # short long polls: a replay reaches the gateway within a second or two
FAST_RETRY = {"poll_timeout_seconds": POLL_TIMEOUT_S, "retry_initial_ms": 100, "retry_max_ms": 500}
WATCH_S = 2.0  # how long the replayed answers are watched being refused


@pytest.fixture(scope="module")
def setup(live: LiveProcesses) -> Iterator[tuple[ControlPlane, FaultProxy, Envoy]]:
    cp = live.control_plane()
    cp.org("acme")
    cp.locked_plan("acme", "gold", "1", (10_000_000, "day"))
    cp.api_version("acme", "orders", "1", "/orders/v1", plans=(("gold", "1"),))
    proxy = FaultProxy(cp.port)
    try:
        envoy = live.gateway(cp, control_plane_url=proxy.url, poller=FAST_RETRY)
        wait_all_workers_enforce(envoy, cp.revision(), deadline_s=30)
        yield cp, proxy, envoy
    finally:
        proxy.stop()


def full_answer(cp: ControlPlane) -> Recorded:
    """The control plane's full answer to a gateway, as a network in between records it."""
    response = requests.get(
        f"{cp.url}/v1/snapshot",
        headers={"authorization": f"Bearer {cp.secret('TOLLGATE_GATEWAY_TOKEN')}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    headers = tuple((k, v) for k, v in response.headers.items() if k.lower() in ("x-tollgate-signature", "etag", "content-type"))
    return Recorded("/v1/snapshot", 200, headers, response.content)


def replay_and_watch(proxy: FaultProxy, envoy: Envoy, answer: Recorded, check: Callable[[], None]) -> float:
    """Replays `answer` to the gateway until it has refused it at least twice, checking
    `check` all along; returns how many refusals the replay guard counted."""
    before = snapshot_metrics(envoy)
    replays_before = proxy.count("replay")
    proxy.replay(answer)

    def refused_twice() -> bool:
        check()  # from the first replay on
        return snapshot_metrics(envoy).replayed >= before.replayed + 2

    try:
        wait_until(refused_twice, RECONNECT_DEADLINE_S, "the gateway to refuse the replayed answer twice")
        watching = time.monotonic()
        while time.monotonic() - watching < WATCH_S:  # many of the workers' refresh ticks
            check()
            time.sleep(0.05)
    finally:
        proxy.set_fault(None)
    after = snapshot_metrics(envoy)
    assert proxy.count("replay") > replays_before, "the proxy replayed"
    assert after.rejected - before.rejected >= after.replayed - before.replayed
    assert after.updates == before.updates, "a replayed answer was published"
    print(
        f"replayed revision {answer.revision()} ({len(answer.body)} bytes) {proxy.count('replay') - replays_before} "
        f"times: replayed_total +{after.replayed - before.replayed:.0f}, rejected_total +{after.rejected - before.rejected:.0f}"
    )
    return after.replayed - before.replayed


def test_a_replayed_older_revision_does_not_bring_back_a_revoked_contract_or_a_rotated_key(
    setup: tuple[ControlPlane, FaultProxy, Envoy],
) -> None:
    cp, proxy, envoy = setup
    old_key = cp.client_version("acme", "mobile", "1")
    contract = cp.contract("acme/mobile/1", "acme/orders/1", "gold")
    other_key = cp.client_version("acme", "tablet", "1")
    tablet_contract = cp.contract("acme/tablet/1", "acme/orders/1", "gold")
    answered(envoy, ORDERS, old_key, 200, CHANGE_DEADLINE_S)
    answered(envoy, ORDERS, other_key, 200, CHANGE_DEADLINE_S)
    recorded_revision = cp.revision()
    wait_all_workers_enforce(envoy, recorded_revision)
    recorded_full = full_answer(cp)
    recorded_delta = proxy.last_snapshot  # what the gateway itself last received (a delta)
    assert recorded_full.revision() == recorded_revision
    assert recorded_delta is not None and recorded_delta.revision() == recorded_revision

    # Revision N+2: the tablet's contract is revoked, the mobile key rotated with grace 0.
    cp.delete_contract("acme/tablet/1", tablet_contract)
    new_key = str(cp.rotate_key("acme/mobile/1", grace_seconds=0)["api_key"])
    answered(envoy, ORDERS, other_key, 403, CHANGE_DEADLINE_S)
    answered(envoy, ORDERS, new_key, 200, CHANGE_DEADLINE_S)
    answered(envoy, ORDERS, old_key, 401, CHANGE_DEADLINE_S)
    current = cp.revision()
    wait_all_workers_enforce(envoy, current)
    assert current > recorded_revision and contract

    def still_current() -> None:
        assert get(envoy, ORDERS, other_key).status_code == 403, "the revoked contract came back"
        assert get(envoy, ORDERS, new_key).status_code == 200, "the new key stopped working"
        refused = get(envoy, ORDERS, old_key)
        assert refused.status_code == 401, "the rotated-out key works again"
        assert problem(refused)["status"] == 401

    assert replay_and_watch(proxy, envoy, recorded_full, still_current) >= 2
    assert f"revision {recorded_revision} is not newer than revision {current}" in envoy.log()
    assert replay_and_watch(proxy, envoy, recorded_delta, still_current) >= 2
    assert f"but this gateway holds revision {current}" in envoy.log()
    assert snapshot_metrics(envoy).revision == current

    # The real control plane again: the gateway follows its next change.
    cp.delete_contract("acme/mobile/1", contract)
    answered(envoy, ORDERS, new_key, 403, RECONNECT_DEADLINE_S)


def test_a_starting_gateway_refuses_an_answer_older_than_the_maximum_age(
    live: LiveProcesses, setup: tuple[ControlPlane, FaultProxy, Envoy]
) -> None:
    cp, _, _ = setup
    max_age_s = 2
    recorded = full_answer(cp)
    signed_at = time.time()
    proxy = FaultProxy(cp.port)
    try:
        proxy.replay(recorded)
        wait_until(lambda: time.time() - signed_at > max_age_s + 1.5, 10, "the recording to age")
        envoy = live.gateway(cp, control_plane_url=proxy.url, poller={**FAST_RETRY, "max_snapshot_age_seconds": max_age_s})

        def refused_twice() -> bool:
            assert snapshot_metrics(envoy).updates == 0, "the old answer was taken"
            return snapshot_metrics(envoy).replayed >= 2

        wait_until(refused_twice, RECONNECT_DEADLINE_S, "the new gateway to refuse the old answer")
        assert "more than max_snapshot_age_seconds (2 s)" in envoy.log()
        metrics = snapshot_metrics(envoy)
        assert metrics.updates == 0 and metrics.revision == 0
        assert get(envoy, ORDERS).status_code == 503, "nothing enforced yet: fail closed"
        print(f"a {time.time() - signed_at:.1f} s old answer refused {metrics.replayed:.0f} times (max age {max_age_s} s)")

        # Fresh answers from the control plane are taken at once.
        proxy.set_fault(None)
        wait_until(
            lambda: snapshot_metrics(envoy).revision == cp.revision(),
            RECONNECT_DEADLINE_S,
            "the gateway to take the control plane's fresh answer",
        )
        wait_all_workers_enforce(envoy, cp.revision())
    finally:
        proxy.stop()
