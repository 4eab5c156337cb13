"""Live mode: catalogue changes made over the control plane's HTTP API reach a running Envoy
(2 workers) without a restart: contracts, key rotation, API version lifecycle; and a change
never resets the count of a contract that still exists.

One control plane and one gateway (unmatched requests denied, so a route that appears is
visible as 404 → 200) serve the whole module; each test makes its own clients and APIs.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from typing import Callable

import pytest
import requests

from harness import Envoy, clear_of_window_end, echoed, problem, wait_until
from live import (
    CHANGE_DEADLINE_S,
    WORKERS,
    ControlPlane,
    LiveProcesses,
    answered,
    get,
    percentile,
    wait_all_workers_enforce,
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


def test_new_contract_is_honoured_and_deleted_contract_refused_within_moments(
    control_plane: ControlPlane, envoy: Envoy, report_figure: Callable[[str, str], None]
) -> None:
    """Propagation: from the control plane's 2xx to the first request the gateway answers the
    new way (first worker), and to the log line of the last worker enforcing the revision."""
    client = "acme/propagation/1"
    key = control_plane.client_version("acme", "propagation", "1")
    session = requests.Session()  # keep-alive: poll as tightly as one connection allows
    wait_for_status(envoy, ORDERS, key, 403, session)  # known key, no contract yet

    first_request: list[float] = []
    every_worker: list[float] = []
    contract_id = 0
    for change in range(CHANGES):
        creating = change % 2 == 0
        if creating:
            contract_id = control_plane.contract(client, "acme/orders/1", "gold")
        else:
            control_plane.delete_contract(client, contract_id)
        acknowledged, acknowledged_wall = time.monotonic(), time.time()
        expected = 200 if creating else 403
        end = acknowledged + CHANGE_DEADLINE_S
        while (status := get(envoy, ORDERS, key, session).status_code) != expected:
            assert status == (403 if creating else 200), f"change {change}: unexpected {status}"
            assert time.monotonic() < end, f"change {change} not enforced within {CHANGE_DEADLINE_S}s"
        first_request.append(time.monotonic() - acknowledged)

        revision = control_plane.revision()
        wait_all_workers_enforce(envoy, revision)
        every_worker.append(last_worker_adoption(envoy, revision) - acknowledged_wall)

    report_figure("propagation to the first request (ms)", summary(first_request))
    report_figure("propagation to every worker (ms, from Envoy's log)", summary(every_worker))
    # Fresh connections land on either worker: both now refuse.
    assert {get(envoy, ORDERS, key).status_code for _ in range(8)} == {403}


def summary(seconds: list[float]) -> str:
    ms = [s * 1000 for s in seconds]
    return (
        f"p50 {percentile(ms, 50):.0f}, p99 {percentile(ms, 99):.0f}, max {max(ms):.0f} "
        f"over {len(ms)} changes"
    )


_ENFORCING = re.compile(r"^\[([^\]]+)\]\[(\d+)\].*tollgate: enforcing snapshot revision (\d+)$")


def last_worker_adoption(envoy: Envoy, revision: int) -> float:
    """Wall time (Envoy's log clock, ms resolution) of the last of the first `WORKERS` threads
    other than the main one to log that it enforces `revision`."""
    main_threads = {m.group(1) for m in re.finditer(r"^\[[^\]]+\]\[(\d+)\].*tollgate poller: polling", envoy.log(), re.M)}
    times: dict[str, float] = {}
    for line in envoy.log().splitlines():
        match = _ENFORCING.match(line)
        if match and int(match.group(3)) == revision and match.group(2) not in main_threads:
            at = dt.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp()
            times.setdefault(match.group(2), at)
    assert len(times) >= WORKERS, times
    return max(times.values())


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
