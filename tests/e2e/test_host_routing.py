"""Routing by host in live mode (issue 18 items 1-2), through a real control plane and a real
Envoy (2 workers) with `unmatched: pass`, the setting under which a request that matches no API
reaches the upstream unchecked:

- a host-scoped public API at `/` no longer opens the any-host private APIs for its host;
- the host spellings Envoy and DNS treat as one host (case, port, one trailing dot, userinfo,
  repeated Host headers) reach the host-scoped private API over HTTP/1.1 and HTTP/2, and a host
  the gateway cannot read gets the private API first;
- the control plane refuses (409) a publish that would let a public route shadow a private
  one, in either order, and (400) host names no request can carry.

What Envoy 1.40 itself does with these hosts (checked with this file's raw requests and Envoy's
own virtual-host matching, no filter): it lowercases for matching but keeps the port and a
trailing dot (`api.example.com.` and `api.example.com:10000` miss a virtual host for
`api.example.com`); it passes `user@host` in a Host header through verbatim, and drops userinfo
from an absolute-form target, whose authority replaces the Host header; it joins two Host
headers into one `:authority` with a comma; it answers 400 for a comma, space or non-ASCII
byte inside one Host header and for a request without one.
"""

from __future__ import annotations

import json
import socket
import subprocess

import pytest
import requests

from harness import Envoy
from live import ControlPlane, LiveProcesses, get, wait_all_workers_enforce

SHADOWS = "urn:tollgate:problem:route-shadows-private"


@pytest.fixture(scope="module")
def control_plane(live: LiveProcesses) -> ControlPlane:
    cp = live.control_plane()
    cp.org("acme")
    cp.locked_plan("acme", "gold", "1", (1_000_000, "day"))
    cp.api_version("acme", "orders", "1", "/orders/v1", plans=(("gold", "1"),))
    # The reproduction: a public status page at / for one host.
    version(cp, "statuspage", "1", "/", ["status.example.com"], public=True)
    # A private API for one host only, under a public any-host prefix.
    cp.api_version("acme", "status", "1", "/status/v1", public=True)
    version(cp, "internal", "1", "/status/v1/internal", ["api.example.com"])
    # The rest of the reproduction: an any-host private API nested under the public
    # prefix, and an any-host API that takes bearer tokens only.
    cp.api_version("acme", "status-ops", "1", "/status/v1/ops", plans=(("gold", "1"),))
    create_draft(cp, "billing", "1", "/billing/v1", [], auth="jwt")
    cp.publish("acme", "billing", "1")
    return cp


def version(
    cp: ControlPlane, api: str, number: str, prefix: str, hosts: list[str], public: bool = False
) -> None:
    create_draft(cp, api, number, prefix, hosts, public)
    cp.publish("acme", api, number)


def create_draft(
    cp: ControlPlane,
    api: str,
    number: str,
    prefix: str,
    hosts: list[str],
    public: bool = False,
    auth: str | None = None,
) -> None:
    response = cp.call("POST", "/v1/orgs/acme/apis", {"id": api})
    assert response.status_code in (201, 409), response.text
    body: dict = {"version": number, "public": public, "routing": {"path_prefix": prefix, "hosts": hosts}}
    if auth is not None:
        body["auth"] = auth
    if not public:
        body["plans"] = [{"plan": "gold", "version": "1"}]
    cp.ok("POST", f"/v1/orgs/acme/apis/{api}/versions", body)


@pytest.fixture(scope="module")
def key(control_plane: ControlPlane) -> str:
    key = control_plane.client_version("acme", "mobile", "1")
    control_plane.contract("acme/mobile/1", "acme/orders/1", "gold")
    control_plane.contract("acme/mobile/1", "acme/internal/1", "gold")
    return key


@pytest.fixture(scope="module")
def envoy(live: LiveProcesses, control_plane: ControlPlane, key: str) -> Envoy:
    envoy = live.gateway(control_plane, unmatched="pass")
    wait_all_workers_enforce(envoy, control_plane.revision(), deadline_s=30)
    return envoy


def http1(envoy: Envoy, target: str, hosts: list[str], extra: str = "") -> tuple[int, bytes]:
    """One HTTP/1.1 request written byte for byte: every entry of `hosts` is a Host header."""
    head = f"GET {target} HTTP/1.1\r\n" + "".join(f"Host: {h}\r\n" for h in hosts)
    request = (head + extra + "Connection: close\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", envoy.port), timeout=10) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def http2(envoy: Envoy, path: str, host: str, key: str | None = None) -> int:
    """One HTTP/2 (prior knowledge, cleartext) request by curl, `host` as its :authority."""
    code = http2_or_reset(envoy, path, host, key)
    assert code is not None, f"Envoy reset the stream for :authority {host!r}"
    return code


def http2_or_reset(envoy: Envoy, path: str, host: str, key: str | None = None) -> int | None:
    """The status of an HTTP/2 request, or None when Envoy resets its stream."""
    args = ["curl", "-sS", "--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_code} %{http_version}"]
    args += ["-H", f"Host: {host}"]
    if key:
        args += ["-H", f"x-api-key: {key}"]
    out = subprocess.run(args + [f"http://127.0.0.1:{envoy.port}{path}"], capture_output=True, text=True, timeout=30)
    # Envoy refusing the request resets the stream or the connection; curl reports it as 16
    # (HTTP/2 error), 18 (stream not closed cleanly), 56 (connection reset) or 92 (stream error).
    if out.returncode in (16, 18, 56, 92) and out.stdout.startswith("000"):
        return None
    assert out.returncode == 0, out.stderr
    code, version_ = out.stdout.split()
    assert version_ == "2", out.stdout
    return int(code)


def test_host_scoped_public_root_does_not_open_any_host_private_api(envoy: Envoy, key: str) -> None:
    assert get_on(envoy, "/orders/v1/1", "status.example.com") == 401
    assert get_on(envoy, "/orders/v1/1", "status.example.com", key) == 200
    # Nor the nested private API under the public any-host prefix, nor the token-only API.
    assert get_on(envoy, "/status/v1/ops/users", "status.example.com") == 401
    assert get_on(envoy, "/status/v1/ops/users", "status.example.com", key) == 403
    billing = requests.get(f"{envoy.url}/billing/v1/invoices", headers={"host": "status.example.com"}, timeout=10)
    assert billing.status_code == 401
    assert billing.headers["www-authenticate"].startswith("Bearer"), billing.headers
    # The status page still serves its host's other paths without a key.
    assert get_on(envoy, "/index.html", "status.example.com") == 200


def get_on(envoy: Envoy, path: str, host: str, key: str | None = None) -> int:
    headers = {"host": host}
    if key:
        headers["x-api-key"] = key
    return requests.get(f"{envoy.url}{path}", headers=headers, timeout=10).status_code


HOST_SPELLINGS = [
    "api.example.com",
    "api.example.com.",
    "API.Example.COM",
    "api.example.com:10000",
    "API.example.com.:10000",
    "user@api.example.com",
]


@pytest.mark.parametrize("host", HOST_SPELLINGS)
def test_every_spelling_of_the_host_reaches_its_private_api_over_http1(envoy: Envoy, host: str) -> None:
    status, _ = http1(envoy, "/status/v1/internal/config", [host])
    assert status == 401, host


@pytest.mark.parametrize("authority", ["user@api.example.com", "API.example.com.:10000", "u:p@api.example.com."])
def test_an_absolute_form_target_names_the_host_whatever_the_host_header(envoy: Envoy, authority: str) -> None:
    # Envoy takes the authority of an absolute-form target (without userinfo) as :authority.
    status, _ = http1(envoy, f"http://{authority}/status/v1/internal/config", ["www.example.com"])
    assert status == 401, authority


@pytest.mark.parametrize("host", [h for h in HOST_SPELLINGS if "@" not in h])
def test_every_spelling_of_the_host_reaches_its_private_api_over_http2(envoy: Envoy, host: str, key: str) -> None:
    assert http2(envoy, "/status/v1/internal/config", host) == 401, host
    assert http2(envoy, "/status/v1/internal/config", host, key) == 200, host


def test_userinfo_in_an_http2_authority_never_reaches_the_upstream_unchecked(envoy: Envoy) -> None:
    # Envoy resets the stream (RFC 9113 forbids userinfo in :authority); were it to pass one,
    # the gateway would read the host after the '@'.
    assert http2_or_reset(envoy, "/status/v1/internal/config", "user@api.example.com") in (None, 401)


@pytest.mark.parametrize("host", ["api.example.com,other.example.com", "api.example.com.."])
def test_an_http2_authority_the_gateway_cannot_read_gets_the_private_api_first(envoy: Envoy, host: str) -> None:
    # Envoy passes both through to the filter and the upstream unchanged.
    assert http2(envoy, "/status/v1/internal/config", host) == 401, host


def test_a_key_opens_the_private_api_on_a_trailing_dot_host(envoy: Envoy, key: str) -> None:
    status, body = http1(envoy, "/status/v1/internal/config", ["api.example.com."], f"x-api-key: {key}\r\n")
    assert status == 200
    assert json.loads(body)["path"] == "/status/v1/internal/config"


@pytest.mark.parametrize(
    "hosts",
    [
        ["api.example.com", "api.example.com"],
        ["api.example.com", "other.example.com"],
        ["other.example.com", "api.example.com"],
    ],
)
def test_repeated_host_headers_never_skip_the_private_api(envoy: Envoy, hosts: list[str]) -> None:
    # Envoy hands the filter "a,b"; the upstream might take either.
    status, _ = http1(envoy, "/status/v1/internal/config", hosts)
    assert status == 401, hosts


@pytest.mark.parametrize("host", ["api.example.com..", "api%2eexample.com", ""])
def test_a_host_the_gateway_cannot_read_gets_the_private_api_first(envoy: Envoy, host: str) -> None:
    status, _ = http1(envoy, "/status/v1/internal/config", [host])
    assert status == 401, repr(host)
    # Where no private API matches, it is routed as any other host.
    status, _ = http1(envoy, "/status/v1/health", [host])
    assert status == 200, repr(host)


def test_other_hosts_get_the_any_host_public_api(envoy: Envoy) -> None:
    status, _ = http1(envoy, "/status/v1/internal/config", ["www.example.com"])
    assert status == 200
    assert http2(envoy, "/status/v1/internal/config", "www.example.com") == 200


def test_publishing_a_public_route_over_a_private_one_is_409(control_plane: ControlPlane, envoy: Envoy) -> None:
    revision = control_plane.revision()
    create_draft(control_plane, "statuspage", "2", "/orders/v1", ["status.example.com"], public=True)
    answer = control_plane.call("POST", "/v1/orgs/acme/apis/statuspage/versions/2/publish")
    assert answer.status_code == 409, answer.text
    body = answer.json()
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert body["type"] == SHADOWS
    assert "acme/orders/1" in body["detail"] and "status.example.com" in body["detail"], body
    # Nested below the private prefix, any host.
    create_draft(control_plane, "statuspage", "3", "/orders/v1/docs", [], public=True)
    answer = control_plane.call("POST", "/v1/orgs/acme/apis/statuspage/versions/3/publish")
    assert answer.status_code == 409 and answer.json()["type"] == SHADOWS, answer.text
    assert control_plane.revision() == revision
    assert get(envoy, "/orders/v1/docs/x").status_code == 401


def test_publishing_a_private_route_under_a_public_one_is_409(control_plane: ControlPlane) -> None:
    # The public any-host /status/v1 is above it: allowed (the private prefix is longer).
    version(control_plane, "status-admin", "1", "/status/v1/admin", [])
    # A private prefix above a published public one is refused.
    create_draft(control_plane, "status-all", "1", "/status", ["www.example.com"])
    answer = control_plane.call("POST", "/v1/orgs/acme/apis/status-all/versions/1/publish")
    assert answer.status_code == 409, answer.text
    assert answer.json()["type"] == SHADOWS
    assert "acme/status/1" in answer.json()["detail"]


@pytest.mark.parametrize("host", [".", "-", "..", "a..example.com", "api.example.com:8080", "*.example.com"])
def test_invalid_host_names_are_400_naming_the_field(control_plane: ControlPlane, host: str) -> None:
    answer = control_plane.call(
        "POST",
        "/v1/orgs/acme/apis/statuspage/versions",
        {"version": "bad", "public": True, "routing": {"path_prefix": "/bad", "hosts": [host]}},
    )
    assert answer.status_code == 400, answer.text
    assert "routing.hosts[0]" in answer.json()["detail"], answer.text
