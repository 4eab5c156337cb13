"""Live mode: catalogue changes made over the control plane's HTTP API reach a running Envoy
(2 workers) without a restart: contracts, key rotation, API version lifecycle; and a change
never resets the count of a contract that still exists.

One control plane and one gateway (unmatched requests denied, so a route that appears is
visible as 404 → 200) serve the whole module; each test makes its own clients and APIs.
"""

from __future__ import annotations

import random
import time
from typing import Callable

import pytest
import requests

from harness import WORKERS, Envoy, clear_of_window_end, echoed, problem, prometheus_samples, wait_until
from live import (
    CHANGE_DEADLINE_S,
    ControlPlane,
    LiveProcesses,
    answered,
    get,
    percentile,
    snapshot_metrics,
    wait_all_workers_enforce,
    worker_sessions,
)

CHANGES = 60  # contract creations and deletions measured, alternating
ORDERS = "/orders/v1/items"


@pytest.fixture(scope="module")
def control_plane(live: LiveProcesses) -> ControlPlane:
    cp = live.control_plane()
    cp.org("acme")
    cp.locked_plan("acme", "gold", "1", (1_000_000, "day"))
    cp.locked_plan("acme", "five", "1", (5, "day"))
    cp.api_version("acme", "orders", "1", "/orders/v1", plans=(("gold", "1"), ("five", "1")))
    return cp


@pytest.fixture(scope="module")
def envoy(live: LiveProcesses, control_plane: ControlPlane) -> Envoy:
    envoy = live.gateway(control_plane, unmatched="deny")
    wait_all_workers_enforce(envoy, control_plane.revision(), deadline_s=30)
    return envoy


def wait_for_status(
    envoy: Envoy, path: str, key: str | None, status: int, session: requests.Session | None = None
) -> requests.Response:
    """Polls the gateway until `path` answers `status`; returns that response."""
    return answered(envoy, path, key, status, CHANGE_DEADLINE_S, session)


def test_one_poller_per_envoy_process_holds_one_long_poll(control_plane: ControlPlane, envoy: Envoy) -> None:
    """Two workers, one poller: the control plane sees a single gateway waiting on it."""

    def long_polls_waiting() -> float:
        text = requests.get(f"{control_plane.url}/metrics", timeout=5).text
        return sum(v for _, _, v in prometheus_samples(text, "tollgate_snapshot_long_polls_waiting"))

    wait_until(lambda: long_polls_waiting() == 1, CHANGE_DEADLINE_S, "the gateway's long poll")
    before = snapshot_metrics(envoy)
    control_plane.locked_plan("acme", "one-poller", "1", (1, "day"))  # wakes the poll
    wait_all_workers_enforce(envoy, control_plane.revision())
    after = snapshot_metrics(envoy)
    assert after.revision == control_plane.revision() and after.updates > before.updates
    wait_until(lambda: long_polls_waiting() == 1, CHANGE_DEADLINE_S, "the gateway's next long poll")


def test_new_contract_is_honoured_and_deleted_contract_refused_within_moments(
    control_plane: ControlPlane, envoy: Envoy, report_figure: Callable[[str, str], None]
) -> None:
    """Propagation: from the control plane's 2xx to the first request answered the new way,
    and to the moment every worker answers it, polling one kept-alive connection per worker."""
    client = "acme/propagation/1"
    key = control_plane.client_version("acme", "propagation", "1")
    sessions = worker_sessions(envoy)
    for session in sessions:
        wait_for_status(envoy, ORDERS, key, 403, session)  # known key, no contract yet

    first_worker: list[float] = []
    every_worker: list[float] = []
    every_worker_from_request: list[float] = []  # includes the control plane's durable write
    contract_id = 0
    for change in range(CHANGES):
        # A random phase against the workers' refresh tick: a loop of fixed-length steps would
        # otherwise lock onto the tick and measure one point of it over and over.
        time.sleep(random.uniform(0, 0.025))
        creating = change % 2 == 0
        sent = time.monotonic()
        if creating:
            contract_id = control_plane.contract(client, "acme/orders/1", "gold")
        else:
            control_plane.delete_contract(client, contract_id)
        acknowledged = time.monotonic()
        expected, previous = (200, 403) if creating else (403, 200)
        observed: dict[int, float] = {}
        while len(observed) < len(sessions):
            for worker, session in enumerate(sessions):
                if worker in observed:
                    continue
                status = get(envoy, ORDERS, key, session).status_code
                elapsed = time.monotonic() - acknowledged
                if status == expected:
                    observed[worker] = elapsed
                else:
                    assert status == previous, f"change {change}: unexpected {status}"
                    assert elapsed < CHANGE_DEADLINE_S, f"change {change}: not enforced within {CHANGE_DEADLINE_S}s"
        first_worker.append(min(observed.values()))
        every_worker.append(max(observed.values()))
        every_worker_from_request.append(acknowledged - sent + max(observed.values()))

    report_figure("propagation, control plane 2xx to the first worker (ms)", summary(first_worker))
    report_figure(f"propagation, control plane 2xx to all {WORKERS} workers (ms)", summary(every_worker))
    report_figure(
        f"propagation, API request sent to all {WORKERS} workers (ms)", summary(every_worker_from_request)
    )
    assert {get(envoy, ORDERS, key).status_code for _ in range(8)} == {403}


def summary(seconds: list[float]) -> str:
    ms = [s * 1000 for s in seconds]
    return (
        f"p50 {percentile(ms, 50):.0f}, p99 {percentile(ms, 99):.0f}, max {max(ms):.0f} "
        f"over {len(ms)} changes"
    )


def test_rotated_key_works_at_once_and_the_old_one_until_its_grace_ends(
    control_plane: ControlPlane, envoy: Envoy
) -> None:
    client = "acme/rotating/1"
    old_key = control_plane.client_version("acme", "rotating", "1")
    control_plane.contract(client, "acme/orders/1", "gold")
    wait_for_status(envoy, ORDERS, old_key, 200)

    rotated = control_plane.rotate_key(client, grace_seconds=3)
    new_key, expires_at = rotated["api_key"], rotated["previous_key_expires_at"]
    assert new_key != old_key
    wait_for_status(envoy, ORDERS, new_key, 200)

    # Until the grace period ends, both keys work on every worker (fresh connections).
    checks = 0
    while time.time() < expires_at - 0.3:
        assert get(envoy, ORDERS, old_key).status_code == 200, "the old key stopped before its grace ended"
        assert get(envoy, ORDERS, new_key).status_code == 200
        checks += 1
    assert checks > 0, "the grace period was over before it could be checked"

    refused = answered(envoy, ORDERS, old_key, 401, max(0.0, expires_at - time.time()) + CHANGE_DEADLINE_S)
    assert time.time() >= expires_at - 0.3, "refused before the grace period ended"
    assert refused.headers["www-authenticate"] == 'APIKey realm="tollgate", header="x-api-key"'
    assert old_key not in refused.text
    assert problem(refused)["status"] == 401
    assert {get(envoy, ORDERS, new_key).status_code for _ in range(6)} == {200}


def test_a_rotation_without_grace_cuts_off_a_key_still_in_an_earlier_grace(
    control_plane: ControlPlane, envoy: Envoy
) -> None:
    client = "acme/twice-rotated/1"
    first = control_plane.client_version("acme", "twice-rotated", "1")
    control_plane.contract(client, "acme/orders/1", "gold")
    wait_for_status(envoy, ORDERS, first, 200)

    second = control_plane.rotate_key(client, grace_seconds=30 * 24 * 3600)["api_key"]
    wait_for_status(envoy, ORDERS, second, 200)
    assert get(envoy, ORDERS, first).status_code == 200, "the first key is in its 30-day grace"

    third = control_plane.rotate_key(client, grace_seconds=0)
    assert third["previous_key_expires_at"] <= time.time() + 1
    # Each worker adopts a revision on its own tick: once both enforce the rotation's, a request
    # on either refuses the two older keys.
    wait_all_workers_enforce(envoy, control_plane.revision())
    assert get(envoy, ORDERS, third["api_key"]).status_code == 200
    refused = get(envoy, ORDERS, first)
    assert refused.status_code == 401 and first not in refused.text
    assert {get(envoy, ORDERS, k).status_code for k in (first, second)} == {401}


def test_a_revoked_key_is_refused_at_once_whatever_its_grace(control_plane: ControlPlane, envoy: Envoy) -> None:
    client = "acme/revoking/1"
    old = control_plane.client_version("acme", "revoking", "1")
    control_plane.contract(client, "acme/orders/1", "gold")
    new = control_plane.rotate_key(client, grace_seconds=30 * 24 * 3600)["api_key"]
    wait_for_status(envoy, ORDERS, new, 200)
    assert get(envoy, ORDERS, old).status_code == 200

    path = "/v1/orgs/acme/clients/revoking/versions/1"
    old_id = control_plane.ok("GET", path)["keys"][0]["id"]
    control_plane.ok("POST", f"{path}/keys/{old_id}/revoke")
    wait_for_status(envoy, ORDERS, old, 401)
    assert {get(envoy, ORDERS, new).status_code for _ in range(6)} == {200}


def test_retired_version_answers_410_and_a_newly_published_one_is_reachable(
    control_plane: ControlPlane, envoy: Envoy
) -> None:
    client = "acme/catalog-reader/1"
    key = control_plane.client_version("acme", "catalog-reader", "1")
    control_plane.api_version("acme", "catalog", "1", "/catalog/v1", plans=(("gold", "1"),))
    control_plane.contract(client, "acme/catalog/1", "gold")
    wait_for_status(envoy, "/catalog/v1/books", key, 200)

    control_plane.retire("acme", "catalog", "1")
    retired = wait_for_status(envoy, "/catalog/v1/books", key, 410)
    assert problem(retired)["status"] == 410

    control_plane.api_version("acme", "catalog", "2", "/catalog/v2", public=True, publish=False)
    wait_all_workers_enforce(envoy, control_plane.revision())
    assert get(envoy, "/catalog/v2/books").status_code == 404, "a draft must not be routed"

    control_plane.publish("acme", "catalog", "2")
    reached = echoed(wait_for_status(envoy, "/catalog/v2/books", None, 200))
    assert reached["path"] == "/catalog/v2/books"
    wait_all_workers_enforce(envoy, control_plane.revision())
    assert {get(envoy, "/catalog/v2/books").status_code for _ in range(6)} == {200}
    assert {get(envoy, "/catalog/v1/books", key).status_code for _ in range(6)} == {410}


def test_a_limits_count_is_unchanged_across_an_unrelated_catalogue_change(
    control_plane: ControlPlane, envoy: Envoy
) -> None:
    clear_of_window_end("day")
    client = "acme/counted/1"
    key = control_plane.client_version("acme", "counted", "1")
    control_plane.contract(client, "acme/orders/1", "five")
    wait_for_status(envoy, ORDERS, key, 200)  # the first of the five
    remaining = [int(get(envoy, ORDERS, key).headers["x-ratelimit-remaining"]) for _ in range(2)]
    assert remaining == [3, 2]

    control_plane.api_version("acme", "unrelated", "1", "/unrelated/v1", public=True)
    wait_all_workers_enforce(envoy, control_plane.revision())
    assert get(envoy, "/unrelated/v1/x").status_code == 200

    after = [get(envoy, ORDERS, key) for _ in range(3)]
    assert [r.status_code for r in after] == [200, 200, 429], [r.text for r in after]
    assert [r.headers["x-ratelimit-remaining"] for r in after[:2]] == ["1", "0"]
