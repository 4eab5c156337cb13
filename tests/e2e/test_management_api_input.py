"""Hostile and careless input to the management API, against the real control plane: bodies too
large, not JSON, of the wrong types or with unknown fields; ids that are not slugs; names in any
script; and conflicting writes racing each other. Every refusal is `application/problem+json`
with a `urn:tollgate:problem:` type and a detail that names the field; nothing is half-written
(checked with GETs and with the snapshot gateways receive).
"""

from __future__ import annotations

import secrets
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import pytest
import requests

from harness import remember_secret
from live import ControlPlane, LiveProcesses

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def cp(live: LiveProcesses) -> ControlPlane:
    token = remember_secret("admin-" + secrets.token_urlsafe(24))
    control_plane = live.control_plane(env={"TOLLGATE_ADMIN_TOKEN": token})
    control_plane.org("acme")
    control_plane.locked_plan("acme", "gold", "1", (100, "minute"))
    return control_plane


def send(cp: ControlPlane, method: str, path: str, body: Any = None, raw: bytes | None = None,
         content_type: str = "application/json") -> requests.Response:
    headers = {"authorization": f"Bearer {cp.secret('TOLLGATE_ADMIN_TOKEN')}"}
    if raw is not None:
        headers["content-type"] = content_type
        return requests.request(method, f"{cp.url}{path}", data=raw, headers=headers, timeout=60)
    return requests.request(method, f"{cp.url}{path}", json=body, headers=headers, timeout=60)


def refused(response: requests.Response, status: int, kind: str, field: str | None = None) -> dict[str, Any]:
    """The response is a problem of this status and kind whose detail names `field`."""
    assert response.status_code == status, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    problem = response.json()
    assert problem["type"] == f"urn:tollgate:problem:{kind}", problem
    assert problem["status"] == status and problem["title"] and problem["detail"], problem
    if field is not None:
        assert field in problem["detail"], problem
    return problem


def absent(cp: ControlPlane, path: str) -> None:
    refused(send(cp, "GET", path), 404, "not-found")


# --- size ----------------------------------------------------------------------------------


def test_oversized_body_is_refused_413(cp: ControlPlane) -> None:
    body = b'{"id":"big","name":"' + b"x" * MIB + b'"}'
    refused(send(cp, "POST", "/v1/orgs", raw=body), 413, "payload-too-large")
    absent(cp, "/v1/orgs/big")


def test_oversized_chunked_body_is_refused_413(cp: ControlPlane) -> None:
    """No Content-Length to refuse up front: the limit holds while reading."""

    def chunks():
        yield b'{"id":"big-chunked","name":"'
        for _ in range(130):
            yield b"x" * 8192
        yield b'"}'

    headers = {"authorization": f"Bearer {cp.secret('TOLLGATE_ADMIN_TOKEN')}", "content-type": "application/json"}
    response = requests.post(f"{cp.url}/v1/orgs", data=chunks(), headers=headers, timeout=60)
    refused(response, 413, "payload-too-large")
    absent(cp, "/v1/orgs/big-chunked")


def test_declared_oversized_apply_is_refused_before_the_body_is_sent(cp: ControlPlane) -> None:
    """`Content-Length` over 64 MiB on /v1/apply: answered 413 without waiting for a byte of
    the body (the client never sends it)."""
    host, port = cp.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            (
                "POST /v1/apply HTTP/1.1\r\n"
                f"host: {host}\r\n"
                f"authorization: Bearer {cp.secret('TOLLGATE_ADMIN_TOKEN')}\r\n"
                "content-type: application/json\r\n"
                f"content-length: {64 * MIB + 1}\r\n\r\n"
            ).encode()
        )
        answer = sock.recv(65536).decode(errors="replace")
    assert answer.startswith("HTTP/1.1 413"), answer[:300]
    assert "application/problem+json" in answer and "urn:tollgate:problem:payload-too-large" in answer


def test_a_body_just_under_the_limit_is_read(cp: ControlPlane) -> None:
    """The limit is the body's size, not something smaller: a ~1 MiB body with a bad name is
    read and refused for its name (400), not for its size."""
    body = b'{"id":"almost","name":"' + b"x" * (MIB - 100) + b'"}'
    refused(send(cp, "POST", "/v1/orgs", raw=body), 400, "invalid-field", "name")


# --- shape ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, field",
    [
        (b'{"id":', "id"),
        (b'{"id":"x1"} trailing', "trailing"),
        (b"", None),
        (b"null", None),
        (b'["x1"]', None),
        (b'{"id":"\xff"}', None),
        (b'{"id":"x1","name":"\\ud800"}', "name"),
        (b'{"id":"x1","id":"x2"}', "duplicate field `id`"),
    ],
)
def test_invalid_json_is_refused_400(cp: ControlPlane, raw: bytes, field: str | None) -> None:
    refused(send(cp, "POST", "/v1/orgs", raw=raw), 400, "invalid-body", field)
    absent(cp, "/v1/orgs/x1")
    absent(cp, "/v1/orgs/x2")


def test_json_without_its_content_type_is_refused_400(cp: ControlPlane) -> None:
    for content_type in ("text/plain", "application/x-www-form-urlencoded"):
        response = send(cp, "POST", "/v1/orgs", raw=b'{"id":"typed"}', content_type=content_type)
        refused(response, 400, "invalid-body", "Content-Type")
    absent(cp, "/v1/orgs/typed")


@pytest.mark.parametrize(
    "path, body, field",
    [
        ("/v1/orgs", {"id": 5}, "id"),
        ("/v1/orgs", {"id": ["acme2"]}, "id"),
        ("/v1/orgs", {"id": "x3", "name": 7}, "name"),
        ("/v1/orgs", {}, "id"),
        ("/v1/orgs/acme/plans/gold/versions", {"version": "2", "limits": [{"requests": "ten", "per": "day"}]}, "limits[0].requests"),
        ("/v1/orgs/acme/plans/gold/versions", {"version": "2", "limits": [{"requests": 10.0, "per": "day"}]}, "limits[0].requests"),
        ("/v1/orgs/acme/plans/gold/versions", {"version": "2", "limits": [{"requests": -1, "per": "day"}]}, "limits[0].requests"),
        ("/v1/orgs/acme/plans/gold/versions", {"version": "2", "limits": [{"requests": 2**64, "per": "day"}]}, "limits[0].requests"),
        ("/v1/orgs/acme/plans/gold/versions", {"version": "2", "limits": [{"requests": 10, "per": "week"}]}, "limits[0].per"),
        ("/v1/orgs/acme/plans/gold/versions", {"version": "2", "limits": {"requests": 10}}, "limits"),
        ("/v1/orgs/acme/plans/gold/versions", {"version": 2, "limits": [{"requests": 10, "per": "day"}]}, "version"),
    ],
)
def test_wrong_types_are_refused_400_naming_the_field(cp: ControlPlane, path: str, body: Any, field: str) -> None:
    refused(send(cp, "POST", path, body), 400, "invalid-body", field)
    absent(cp, "/v1/orgs/x3")
    absent(cp, "/v1/orgs/acme/plans/gold/versions/2")


@pytest.mark.parametrize(
    "path, body, field",
    [
        ("/v1/orgs", {"id": "typo", "nmae": "Typo Inc"}, "nmae"),
        ("/v1/orgs/acme/plans", {"id": "typo", "description": "x"}, "description"),
        ("/v1/orgs/acme/plans/gold/versions", {"version": "2", "limits": [{"requests": 1, "per": "day", "burst": 5}]}, "limits[0].burst"),
        ("/v1/orgs/acme/apis", {"id": "typo", "owner": "me"}, "owner"),
        ("/v1/orgs/acme/apis/typo/versions", {"version": "1", "public": True, "routing": {"path_prefix": "/t", "hosts": [], "strip": True}}, "routing.strip"),
    ],
)
def test_unknown_fields_are_refused_400_naming_the_field(cp: ControlPlane, path: str, body: Any, field: str) -> None:
    """Decision (documented in SECURITY.md and the OpenAPI document): an unknown field is an
    error, not ignored, so a misspelt setting never silently takes its default."""
    refused(send(cp, "POST", path, body), 400, "invalid-body", field)
    absent(cp, "/v1/orgs/typo")
    absent(cp, "/v1/orgs/acme/plans/typo")
    absent(cp, "/v1/orgs/acme/plans/gold/versions/2")
    absent(cp, "/v1/orgs/acme/apis/typo")


def test_wrong_method_is_a_problem(cp: ControlPlane) -> None:
    response = send(cp, "PATCH", "/v1/orgs", {"id": "patched"})
    assert response.status_code == 405 and "POST" in response.headers["allow"]
    refused(response, 405, "method-not-allowed")


# --- ids and names -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "slug",
    ["Acme", "-acme", "acme_corp", "a" * 65, "", " acme", "acme ", "ac/me", "äcme", "acme\u0000", "１２３", "acme.corp", "ﬁ"],
)
def test_invalid_slugs_are_refused_400(cp: ControlPlane, slug: str) -> None:
    refused(send(cp, "POST", "/v1/orgs", {"id": slug}), 400, "invalid-field", "id")
    refused(send(cp, "POST", "/v1/orgs/acme/plans", {"id": slug}), 400, "invalid-field", "id")
    orgs = send(cp, "GET", "/v1/orgs?limit=500").json()["items"]
    assert slug not in [o["id"] for o in orgs]


@pytest.mark.parametrize("path", ["/v1/orgs/Acme", "/v1/orgs/%C3%A4cme", "/v1/orgs/acme%2F..", "/v1/orgs/acme/plans/GOLD"])
def test_invalid_slugs_in_paths_are_refused_400(cp: ControlPlane, path: str) -> None:
    refused(send(cp, "GET", path), 400, "invalid-field")


def test_longest_slug_and_version_are_accepted(cp: ControlPlane) -> None:
    slug = "a" + "-9" * 31 + "z"  # 64 characters
    assert len(slug) == 64
    assert send(cp, "POST", "/v1/orgs", {"id": slug}).status_code == 201
    assert send(cp, "GET", f"/v1/orgs/{slug}").json()["id"] == slug


@pytest.mark.parametrize(
    "name",
    ["ACME Ünïcødé 株式会社", "Компания 🚀", "שלום עולם", "e\u0301", "x" * 200, "🚀" * 200, "名" * 200],
)
def test_unicode_names_round_trip_exactly(cp: ControlPlane, name: str) -> None:
    org = "u" + secrets.token_hex(6)
    created = send(cp, "POST", "/v1/orgs", {"id": org, "name": name})
    assert created.status_code == 201, created.text
    assert created.json()["name"] == name
    assert send(cp, "GET", f"/v1/orgs/{org}").json()["name"] == name
    renamed = send(cp, "PUT", f"/v1/orgs/{org}", {"name": name[::-1]})
    assert renamed.status_code == 200, renamed.text
    assert send(cp, "GET", f"/v1/orgs/{org}").json()["name"] == name[::-1]


@pytest.mark.parametrize(
    "name",
    ["", "x" * 201, "🚀" * 201, "line\nbreak", "tab\tname", "nul\u0000", "bell\u0007", "del\u007f", "c1\u0085"],
)
def test_names_that_are_empty_too_long_or_control_characters_are_refused(cp: ControlPlane, name: str) -> None:
    """Names are 1 to 200 printable characters (counted in characters, not bytes)."""
    refused(send(cp, "POST", "/v1/orgs", {"id": "named", "name": name}), 400, "invalid-field", "name")
    absent(cp, "/v1/orgs/named")


# --- concurrent conflicting writes ---------------------------------------------------------


def race(n: int, call: Callable[[int], requests.Response]) -> list[requests.Response]:
    """`n` calls released together (a barrier), each on its own connection."""
    barrier = threading.Barrier(n)

    def one(i: int) -> requests.Response:
        barrier.wait(timeout=30)
        return call(i)

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(one, range(n)))


def statuses(responses: list[requests.Response]) -> list[int]:
    return sorted(r.status_code for r in responses)


def snapshot(cp: ControlPlane) -> dict[str, Any]:
    response = requests.get(f"{cp.url}/v1/snapshot",
                            headers={"authorization": f"Bearer {cp.secret('TOLLGATE_GATEWAY_TOKEN')}"}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def test_twenty_concurrent_creations_of_one_id_make_one(cp: ControlPlane) -> None:
    responses = race(20, lambda i: send(cp, "POST", "/v1/orgs", {"id": "contested", "name": f"writer {i}"}))
    assert statuses(responses) == [201] + [409] * 19, [r.text for r in responses if r.status_code not in (201, 409)]
    winner = next(r for r in responses if r.status_code == 201).json()["name"]
    for loser in (r for r in responses if r.status_code == 409):
        refused(loser, 409, "already-exists", "contested")
    assert send(cp, "GET", "/v1/orgs/contested").json()["name"] == winner
    orgs = send(cp, "GET", "/v1/orgs?limit=500").json()["items"]
    assert [o["id"] for o in orgs].count("contested") == 1


def test_concurrent_client_versions_issue_one_key(cp: ControlPlane) -> None:
    send(cp, "POST", "/v1/orgs/acme/clients", {"id": "racer"})
    responses = race(10, lambda i: send(cp, "POST", "/v1/orgs/acme/clients/racer/versions", {"version": "1"}))
    assert statuses(responses) == [201] + [409] * 9
    created = next(r for r in responses if r.status_code == 201).json()
    remember_secret(created["api_key"])
    clients = [c for c in snapshot(cp)["clients"] if c["id"] == "acme/racer/1"]
    assert len(clients) == 1 and len(clients[0]["keys"]) == 1, clients


def test_concurrent_lock_and_edit_of_a_plan_version_never_edit_a_locked_version(cp: ControlPlane, report_figure) -> None:
    """Lock and edit race, many times: either the edit lands first (200, then the lock locks the
    edited limits) or the lock does (the edit is 409 plan-version-locked and the limits are the
    original ones). The snapshot always holds exactly what GET shows."""
    send(cp, "POST", "/v1/orgs/acme/plans", {"id": "raced"})
    outcomes: dict[str, int] = {}
    for round_ in range(12):
        version = str(round_ + 1)
        base = f"/v1/orgs/acme/plans/raced/versions/{version}"
        created = send(cp, "POST", "/v1/orgs/acme/plans/raced/versions",
                       {"version": version, "limits": [{"requests": 10, "per": "minute"}]})
        assert created.status_code == 201, created.text
        edited_limits = [{"requests": 99, "per": "hour"}]

        def call(i: int) -> requests.Response:
            if i == 0:
                return send(cp, "POST", f"{base}/lock")
            return send(cp, "PUT", base, {"limits": edited_limits})

        lock, edit = race(2, call)
        assert lock.status_code == 200, lock.text
        assert edit.status_code in (200, 409), edit.text
        now = send(cp, "GET", base).json()
        assert now["status"] == "locked", now
        if edit.status_code == 200:
            assert now["limits"] == edited_limits, now
            outcomes["edit first"] = outcomes.get("edit first", 0) + 1
        else:
            refused(edit, 409, "plan-version-locked")
            assert now["limits"] == [{"requests": 10, "per": "minute"}], now
            outcomes["lock first"] = outcomes.get("lock first", 0) + 1
        in_snapshot = [p for p in snapshot(cp)["plans"] if p["id"] == f"acme/raced/{version}"]
        assert [p["limits"] for p in in_snapshot] == [now["limits"]], in_snapshot
        assert send(cp, "PUT", base, {"limits": edited_limits}).status_code == 409
    assert sum(outcomes.values()) == 12, outcomes
    report_figure("lock/edit races", ", ".join(f"{k}: {v}" for k, v in sorted(outcomes.items())))


def test_concurrent_publishes_of_one_routing_let_exactly_one_win(cp: ControlPlane) -> None:
    for round_ in range(5):
        prefix = f"/contested-{round_}"
        apis = [f"route-{round_}-{i}" for i in range(4)]
        for api in apis:
            send(cp, "POST", "/v1/orgs/acme/apis", {"id": api})
            created = send(cp, "POST", f"/v1/orgs/acme/apis/{api}/versions",
                           {"version": "1", "public": True, "routing": {"path_prefix": prefix, "hosts": []}})
            assert created.status_code == 201, created.text
        responses = race(len(apis), lambda i: send(cp, "POST", f"/v1/orgs/acme/apis/{apis[i]}/versions/1/publish"))
        assert statuses(responses) == [200] + [409] * (len(apis) - 1), [r.text for r in responses]
        for loser in (r for r in responses if r.status_code == 409):
            refused(loser, 409, "routing-collision")
        winner = apis[[r.status_code for r in responses].index(200)]
        published = [a["id"] for a in snapshot(cp)["apis"] if a["routing"]["path_prefix"] == prefix]
        assert published == [f"acme/{winner}/1"], published
        for api in apis:
            status = send(cp, "GET", f"/v1/orgs/acme/apis/{api}/versions/1").json()["status"]
            assert status == ("published" if api == winner else "draft"), (api, status)


def test_concurrent_duplicate_contracts_make_one(cp: ControlPlane) -> None:
    cp.api_version("acme", "dup-orders", "1", "/dup-orders", plans=(("gold", "1"),))
    key = cp.client_version("acme", "dup-client", "1")
    assert key
    responses = race(10, lambda i: send(cp, "POST", "/v1/orgs/acme/clients/dup-client/versions/1/contracts",
                                        {"api_org": "acme", "api": "dup-orders", "api_version": "1", "plan": "gold"}))
    assert statuses(responses) == [201] + [409] * 9, [r.text for r in responses]
    for loser in (r for r in responses if r.status_code == 409):
        refused(loser, 409, "contract-exists")
    listed = send(cp, "GET", "/v1/orgs/acme/clients/dup-client/versions/1/contracts").json()["items"]
    assert len(listed) == 1
    contracts = [c for c in snapshot(cp)["contracts"] if c["client"] == "acme/dup-client/1"]
    assert len(contracts) == 1, contracts


def test_refused_writes_leave_the_revision_alone(cp: ControlPlane) -> None:
    """Everything refused above committed nothing gateways see: a refused write now does not
    move the revision either."""
    before = cp.revision()
    refused(send(cp, "POST", "/v1/orgs/acme/plans/gold/versions/1/lock"), 409, "plan-version-locked")
    refused(send(cp, "POST", "/v1/orgs", {"id": "acme"}), 409, "already-exists", "acme")
    refused(send(cp, "POST", "/v1/orgs/acme/plans/gold/versions", {"version": "1", "limits": [{"requests": 0, "per": "day"}]}),
            422, "invalid-limit", "limits[0].requests")
    assert cp.revision() == before
