"""Rotating the control plane's snapshot signing key as an operator does (the rotation story
of the notes): gateways are first given the new public key beside the old one
(`envoy-config --snapshot-public-key OLD --snapshot-public-key NEW`), then the control plane
signs with the new key. A gateway that trusts both follows every change without a restart; a
gateway that trusts only the old key refuses the new signatures (counted, last good snapshot
kept) until it is given the new key.
"""

from __future__ import annotations

import base64
import hashlib

from live import (
    CHANGE_DEADLINE_S,
    RECONNECT_DEADLINE_S,
    LiveProcesses,
    answered,
    snapshot_metrics,
    wait_all_workers_enforce,
)
from harness import wait_until

ORDERS = "/orders/v1/items"


def test_a_gateway_trusting_old_and_new_keys_follows_the_rotation(live: LiveProcesses) -> None:
    cp = live.control_plane()
    cp.org("acme")
    cp.locked_plan("acme", "gold", "1", (1_000_000, "day"))
    cp.api_version("acme", "orders", "1", "/orders/v1", plans=(("gold", "1"),))
    key = cp.client_version("acme", "mobile", "1")

    new_seed = base64.urlsafe_b64encode(hashlib.sha256(b"rotated snapshot signing key").digest()).decode().rstrip("=")
    old_public, new_public = cp.public_key(), cp.public_key(new_seed)
    assert old_public != new_public
    both = live.gateway(cp, extra_args=("--snapshot-public-key", old_public, "--snapshot-public-key", new_public))
    old_only = live.gateway(cp)
    for envoy in (both, old_only):
        wait_all_workers_enforce(envoy, cp.revision(), deadline_s=30)
        answered(envoy, ORDERS, key, 403, CHANGE_DEADLINE_S)

    # The control plane now signs with the new key; a change follows.
    cp.restart(env={"TOLLGATE_SNAPSHOT_SIGNING_KEY": new_seed})
    assert cp.public_key() == new_public
    rejected_before = snapshot_metrics(old_only).rejected
    cp.contract("acme/mobile/1", "acme/orders/1", "gold")
    answered(both, ORDERS, key, 200, RECONNECT_DEADLINE_S)
    wait_all_workers_enforce(both, cp.revision())
    wait_until(
        lambda: snapshot_metrics(old_only).rejected > rejected_before,
        RECONNECT_DEADLINE_S,
        "the gateway trusting only the old key to refuse the new signature",
    )
    assert "not signed by a trusted snapshot key" in old_only.log()
    assert answered(old_only, ORDERS, key, 403, CHANGE_DEADLINE_S).status_code == 403, "the last good snapshot stays"
    print(f"rotation: both-keys gateway at revision {snapshot_metrics(both).revision:.0f}, "
          f"old-key gateway refused {snapshot_metrics(old_only).rejected - rejected_before:.0f} answers")
