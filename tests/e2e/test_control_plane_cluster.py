"""A gateway of two control-plane replicas (issue 14): `tollgate envoy-config --control-plane`
given twice puts both into one Envoy cluster, health-checked on `/healthz`. When the replica
the poller is long-polling is killed (SIGKILL), the gateway keeps enforcing its snapshot, Envoy
marks that replica down, and the poller's next polls reach the other one: a change made there
alone after the kill is enforced. Restarted, the killed replica is back in the cluster.

The replicas are two SQLite control planes on copies of one data directory, with the same
secrets in their environment and the same token issuer name: the same catalogue, revisions and
keys, as replicas on one PostgreSQL serve them. Only what the gateway's cluster does is tested here; replicas sharing a
PostgreSQL are tested by the PostgreSQL suite.
"""

from __future__ import annotations

import re
import shutil

import pytest

from harness import Envoy, wait_until
from live import (
    CHANGE_DEADLINE_S,
    ControlPlane,
    LiveProcesses,
    answered,
    get,
    replica_secrets,
    snapshot_metrics,
    sqlite_only,
    wait_all_workers_enforce,
)

pytestmark = sqlite_only(
    "these replicas are copies of one SQLite data directory; replicas on one PostgreSQL database "
    "behind one cluster are test_replicas.py's"
)

CLUSTER = "tollgate_control_plane"
ORDERS = "/orders/v1/items"
# The poller retries quickly, so that what is measured is Envoy's failover, not the backoff.
FAST_RETRY = {"retry_initial_ms": 100, "retry_max_ms": 500}
# Two failed health checks a second apart, or two failed calls, take a dead replica out.
MARKED_DOWN_DEADLINE_S = 5.0


class Keys:
    before = ""  # issued before the kill: both replicas hold it
    after = ""  # issued by the survivor after the kill


def cluster_hosts(envoy: Envoy) -> dict[str, dict[str, str]]:
    """The control-plane cluster's hosts in Envoy's `/clusters`: `host:port` → stat → value."""
    status, text = envoy.admin_get("/clusters")
    assert status == 200, text[:200]
    hosts: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        match = re.match(rf"^{CLUSTER}::([^:]+:\d+)::([a-z_]+)::(.*)$", line)
        if match:
            hosts.setdefault(match.group(1), {})[match.group(2)] = match.group(3)
    return hosts


def healthy(envoy: Envoy, replica: ControlPlane) -> bool:
    return cluster_hosts(envoy).get(address(replica), {}).get("health_flags") == "healthy"


def address(replica: ControlPlane) -> str:
    return replica.url.removeprefix("http://")


@pytest.fixture(scope="module")
def replicas(live: LiveProcesses) -> tuple[ControlPlane, ControlPlane]:
    shared = replica_secrets()
    # Replicas issue tokens under one name, not each under its own address.
    args = ("--issuer", "http://control-plane.test")
    first = live.control_plane(env=shared, args=args)
    first.org("acme")
    first.locked_plan("acme", "gold", "1", (1_000_000, "day"))
    first.api_version("acme", "orders", "1", "/orders/v1", plans=(("gold", "1"),))
    Keys.before = first.client_version("acme", "before", "1")
    first.contract("acme/before/1", "acme/orders/1", "gold")
    # The second replica starts from a copy of the first's database, taken while it is stopped.
    first.stop()
    second = live.control_plane(env=shared, start=False, args=args)
    shutil.copytree(first.data_dir, second.data_dir)
    first.start()
    second.start()
    assert first.revision() == second.revision()
    return first, second


@pytest.fixture(scope="module")
def envoy(live: LiveProcesses, replicas: tuple[ControlPlane, ControlPlane]) -> Envoy:
    first, second = replicas
    envoy = live.gateway(first, poller=FAST_RETRY, extra_args=("--control-plane", second.url))
    wait_all_workers_enforce(envoy, first.revision(), deadline_s=30)
    return envoy


def test_both_replicas_are_health_checked_members_of_one_cluster(
    envoy: Envoy, replicas: tuple[ControlPlane, ControlPlane]
) -> None:
    assert set(cluster_hosts(envoy)) == {address(r) for r in replicas}
    for replica in replicas:
        wait_until(lambda: healthy(envoy, replica), MARKED_DOWN_DEADLINE_S, f"{replica.url} healthy")
    assert get(envoy, ORDERS, Keys.before).status_code == 200


def test_killing_the_polled_replica_fails_over_to_the_other(
    envoy: Envoy, replicas: tuple[ControlPlane, ControlPlane]
) -> None:
    # The long poll in flight shows as the one active request of the replica it went to.
    polled_address = wait_until(
        lambda: next((h for h, s in cluster_hosts(envoy).items() if s.get("rq_active") == "1"), None),
        10,
        "a long poll in flight",
    )
    polled, survivor = replicas if address(replicas[0]) == polled_address else replicas[::-1]
    before = snapshot_metrics(envoy)

    polled.kill()

    # The gateway keeps its snapshot: the key both replicas issued still works.
    assert get(envoy, ORDERS, Keys.before).status_code == 200
    wait_until(lambda: not healthy(envoy, polled), MARKED_DOWN_DEADLINE_S, f"{polled.url} marked down")
    assert "failed" in cluster_hosts(envoy)[polled_address]["health_flags"]
    # A change only the survivor has reaches the gateway: its polls go there now.
    Keys.after = survivor.client_version("acme", "after", "1")
    survivor.contract("acme/after/1", "acme/orders/1", "gold")
    revision = survivor.revision()
    assert revision > before.revision
    wait_all_workers_enforce(envoy, revision, deadline_s=MARKED_DOWN_DEADLINE_S + CHANGE_DEADLINE_S)
    answered(envoy, ORDERS, Keys.after, 200, CHANGE_DEADLINE_S)
    assert get(envoy, ORDERS, Keys.before).status_code == 200
    after = snapshot_metrics(envoy)
    assert after.revision == revision
    assert after.updates > before.updates
    assert after.rejected == before.rejected, "nothing the survivor sent was refused"
    wait_until(
        lambda: cluster_hosts(envoy)[address(survivor)].get("rq_active") == "1",
        10,
        f"the next long poll in flight to {survivor.url}",
    )

    # Restarted, the killed replica passes its health check and is back in the cluster.
    polled.start()
    wait_until(lambda: healthy(envoy, polled), MARKED_DOWN_DEADLINE_S, f"{polled.url} healthy again")
