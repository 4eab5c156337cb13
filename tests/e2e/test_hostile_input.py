"""Hostile input at the gateway's edge, through real Envoy (static mode, the listener and path
normalisation of harness.envoy_bootstrap, which match `tollgate envoy-config`): what each odd
request gets, and what the echo upstream received. SECURITY.md lists every outcome decided here.

The rule behind the traversal cases: a public prefix never lets a request reach a private API's
path at the upstream without that API's checks. Requests are sent byte for byte (raw sockets,
no client-side clean-up) so Envoy and the filter see exactly what an attacker would send.
"""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import subprocess
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pytest
import requests

from harness import Catalogue, Envoy, api, client, limit, plan, plugin_config
from live import LiveProcesses, wait_all_workers_enforce

KEY = "hostile-mobile-key-6a1f3e"
OTHER_KEY = "hostile-other-key-b27c40"  # a valid key without a contract for /orders
UNKNOWN_KEY = "hostile-unknown-key-0c9d81"
LONG_KEY = "hostile-8k-key-" + "k" * (8192 - len("hostile-8k-key-"))

CATALOGUE = Catalogue(
    plans=[plan("acme/gold/1", limit(100000, "day"))],
    apis=[
        api("acme/orders/1", "/orders"),  # private
        api("acme/status/1", "/status", public=True),
        api("acme/admin/1", "/status/admin"),  # private, nested under a public prefix
    ],
    clients=[client("acme/mobile/1", KEY), client("acme/other/1", OTHER_KEY)],
)
CATALOGUE.contract("acme/mobile/1", "acme/orders/1", "acme/gold/1")
CATALOGUE.contract("acme/mobile/1", "acme/admin/1", "acme/gold/1")
CATALOGUE.contract("acme/other/1", "acme/admin/1", "acme/gold/1")


@pytest.fixture(scope="module")
def envoy(start_envoy, wasm) -> Envoy:
    return start_envoy(plugin_config(CATALOGUE.snapshot()))


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def upstream(self) -> dict[str, Any] | None:
        """What the echo upstream received, or None when the gateway answered itself."""
        if self.status != 200 or not self.headers.get("content-type", "").startswith("application/json"):
            return None
        body = self.json()
        return body if {"method", "path", "headers"} <= set(body) else None

    def problem_type(self) -> str:
        assert self.headers.get("content-type", "").startswith("application/problem+json"), self
        return str(self.json()["type"])


def send(envoy: Envoy, target: str | bytes, headers: list[tuple[str | bytes, str | bytes]] = ()) -> Answer:
    """One HTTP/1.1 request written byte for byte on a fresh connection (so either worker)."""

    def b(x: str | bytes) -> bytes:
        return x if isinstance(x, bytes) else x.encode()

    head = b"GET " + b(target) + b" HTTP/1.1\r\nhost: gateway.test\r\n"
    head += b"".join(b(name) + b": " + b(value) + b"\r\n" for name, value in headers)
    head += b"connection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", envoy.port), timeout=10) as sock:
        sock.sendall(head)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())


def assert_not_disclosed(answer: Answer, key: str) -> None:
    assert key.encode() not in answer.body
    assert all(key not in value for value in answer.headers.values())


def assert_healthy(envoy: Envoy) -> None:
    """The VMs still decide (no trap left a worker answering 503): a few fresh connections,
    spread over both workers, are all admitted."""
    for _ in range(8):
        answer = send(envoy, "/orders/1", [("x-api-key", KEY)])
        assert answer.upstream is not None, answer


# --- where the key comes from --------------------------------------------------------------


def test_two_key_headers_first_decides_and_both_are_stripped(envoy: Envoy) -> None:
    first_valid = send(envoy, "/orders/1", [("x-api-key", KEY), ("x-api-key", UNKNOWN_KEY)])
    assert first_valid.upstream is not None, first_valid
    assert "x-api-key" not in first_valid.upstream["headers"]
    assert first_valid.upstream["headers"]["x-tollgate-client"] == "acme/mobile/1"

    first_unknown = send(envoy, "/orders/1", [("x-api-key", UNKNOWN_KEY), ("x-api-key", KEY)])
    assert first_unknown.status == 401, first_unknown
    assert first_unknown.problem_type().endswith("invalid-api-key")
    assert_not_disclosed(first_unknown, UNKNOWN_KEY)


def test_key_in_header_and_query_header_wins_and_both_are_stripped(envoy: Envoy) -> None:
    header_valid = send(envoy, f"/orders/1?apikey={UNKNOWN_KEY}&page=2", [("x-api-key", KEY)])
    assert header_valid.upstream is not None, header_valid
    assert header_valid.upstream["path"] == "/orders/1?page=2"
    assert "x-api-key" not in header_valid.upstream["headers"]

    header_unknown = send(envoy, f"/orders/1?apikey={KEY}", [("x-api-key", UNKNOWN_KEY)])
    assert header_unknown.status == 401, header_unknown
    assert_not_disclosed(header_unknown, KEY)
    assert_not_disclosed(header_unknown, UNKNOWN_KEY)


def test_empty_key_is_401(envoy: Envoy) -> None:
    for headers, target in [
        ([("x-api-key", "")], "/orders/1"),
        ([], "/orders/1?apikey="),
        ([], "/orders/1?apikey"),
    ]:
        answer = send(envoy, target, headers)
        assert answer.status == 401, (target, headers, answer)
        assert answer.headers["www-authenticate"].startswith("APIKey")


def test_empty_key_header_is_a_missing_key_even_with_a_query_key(envoy: Envoy) -> None:
    # The header, when present, is where the key is; an empty one is no key (fail closed).
    answer = send(envoy, f"/orders/1?apikey={KEY}", [("x-api-key", "")])
    assert answer.status == 401, answer
    assert answer.problem_type().endswith("missing-api-key")


def test_8_kib_key_is_401_never_echoed(envoy: Envoy) -> None:
    for target, headers in [("/orders/1", [("x-api-key", LONG_KEY)]), (f"/orders/1?apikey={LONG_KEY}", [])]:
        answer = send(envoy, target, headers)
        assert answer.status == 401, answer
        assert answer.problem_type().endswith("invalid-api-key")
        assert_not_disclosed(answer, LONG_KEY)
    assert_healthy(envoy)


def test_non_ascii_key_bytes_are_401_and_trap_nothing(envoy: Envoy) -> None:
    for raw in [b"caf\xc3\xa9-key", b"\xff\xfe\x80-not-utf8", KEY.encode() + b"\xff"]:
        answer = send(envoy, "/orders/1", [(b"x-api-key", raw)])
        assert answer.status == 401, (raw, answer)
    for encoded in ["%ff%fe%80", quote(KEY) + "%ff", "%00" + quote(KEY)]:
        answer = send(envoy, f"/orders/1?apikey={encoded}")
        assert answer.status == 401, (encoded, answer)
    assert_healthy(envoy)


def test_control_bytes_in_the_key_are_refused_by_envoy_before_the_filter(envoy: Envoy) -> None:
    # NUL, CR and other controls are not valid in a field value: Envoy's codec answers 400 and
    # nothing reaches the filter or the upstream.
    for raw in [KEY.encode() + b"\x00", KEY.encode() + b"\x01", b"\x7f" + KEY.encode()]:
        answer = send(envoy, "/orders/1", [(b"x-api-key", raw)])
        assert answer.status == 400, (raw, answer)
        assert answer.upstream is None
    assert_healthy(envoy)


def test_percent_encoded_query_key_is_decoded_and_stripped(envoy: Envoy) -> None:
    fully_encoded = "".join(f"%{b:02X}" for b in KEY.encode())
    for target in [f"/orders/1?apikey={fully_encoded}", f"/orders/1?%61pikey={KEY}", f"/orders/1?a=1&%61%70%69key={KEY}"]:
        answer = send(envoy, target)
        assert answer.upstream is not None, (target, answer)
        assert KEY not in answer.upstream["path"] and "pikey" not in answer.upstream["path"], answer.upstream
    assert send(envoy, "/orders/1?a=1&%61%70%69key=x").upstream is None


def test_header_name_case_does_not_matter(envoy: Envoy) -> None:
    for name in ["X-API-KEY", "X-Api-Key", "x-API-key"]:
        answer = send(envoy, "/orders/1", [(name, KEY)])
        assert answer.upstream is not None, (name, answer)
        assert "x-api-key" not in answer.upstream["headers"]


def test_forged_identity_headers_are_replaced(envoy: Envoy) -> None:
    forged = [("X-Tollgate-Client", "acme/root/1"), ("x-tollgate-plan", "acme/unlimited/1")]
    allowed = send(envoy, "/orders/1", [("x-api-key", KEY), *forged])
    assert allowed.upstream is not None
    assert allowed.upstream["headers"]["x-tollgate-client"] == "acme/mobile/1"
    assert allowed.upstream["headers"]["x-tollgate-plan"] == "acme/gold/1"
    public = send(envoy, "/status/health", forged)
    assert public.upstream is not None
    assert "x-tollgate-client" not in public.upstream["headers"]
    assert "x-tollgate-plan" not in public.upstream["headers"]


# --- prefixes and traversal ----------------------------------------------------------------

# (request target, expected status, the path the upstream must have received or None).
# Envoy normalises first (normalize_path, merge_slashes, escaped slashes unescaped and
# redirected); the filter then refuses anything still not in normal form with 400.
TRAVERSALS = [
    ("/orders-admin", 200, "/orders-admin"),  # not under /orders: unmatched, passes untouched
    ("/ordersx/1", 200, "/ordersx/1"),
    ("/orders", 401, None),
    ("/orders/", 401, None),
    ("//orders/1", 401, None),  # merged to /orders/1: the private API's checks apply
    # RFC 3986 first (`..` removes the empty segment), then slashes merged: still public.
    ("/status//../orders/1", 200, "/status/orders/1"),
    ("/status/../orders/1", 401, None),
    ("/status/./../orders/1", 401, None),
    ("/status/%2e%2e/orders/1", 401, None),
    ("/status/%2E%2e/orders/1", 401, None),
    ("/status/.%2e/orders/1", 401, None),
    ("/status/admin", 401, None),  # the longest prefix wins: the private API nested in a public one
    ("/status/admin/users", 401, None),
    ("/status/x/../admin/users", 401, None),
    ("/status/%61dmin/users", 401, None),  # %61 = 'a': Envoy decodes unreserved characters
    ("/status/admin-panel", 200, "/status/admin-panel"),  # public: not on a segment boundary
    ("/status/health", 200, "/status/health"),
]


@pytest.mark.parametrize(("target", "status", "upstream_path"), TRAVERSALS, ids=[t for t, _, _ in TRAVERSALS])
def test_traversal_never_reaches_a_private_path_unchecked(envoy: Envoy, target: str, status: int, upstream_path: str | None) -> None:
    answer = send(envoy, target)
    assert answer.status == status, answer
    if upstream_path is None:
        assert answer.upstream is None
    else:
        assert answer.upstream is not None and answer.upstream["path"] == upstream_path, answer


def test_path_case_is_significant(envoy: Envoy) -> None:
    # Prefixes match case-sensitively, as paths are (RFC 3986): `/status/ADMIN` is the public
    # API's path. An upstream that routes case-insensitively must not put a private API under a
    # public prefix (SECURITY.md, known limits).
    answer = send(envoy, "/status/ADMIN/users")
    assert answer.upstream is not None and answer.upstream["path"] == "/status/ADMIN/users"
    assert send(envoy, "/ORDERS/1").upstream is not None  # no API there: unmatched passes


# Tomcat, Spring and Jetty drop `;` parameters from each segment before routing, so
# `/status/admin;x=1/users` is their `/status/admin/users`: the gateway must read it that way.
PATH_PARAMETERS = [
    ("/status/admin;x=1/users", 401),
    ("/status/admin;/users", 401),
    ("/status/admin;", 401),
    ("/status/admin;jsessionid=0A1B/users", 401),
    ("/orders;x=1/1", 401),
    # Tomcat's `..;` traversal: refused (400) or checked as the private path it means (401).
    ("/status/..;/orders/1", (400, 401)),
    ("/status/.;x/admin/users", (400, 401)),
]


@pytest.mark.parametrize(("target", "status"), PATH_PARAMETERS, ids=[t for t, _ in PATH_PARAMETERS])
def test_path_parameters_never_reach_a_private_path_unchecked(envoy: Envoy, target: str, status: int | tuple[int, ...]) -> None:
    answer = send(envoy, target)
    assert answer.upstream is None, answer
    assert answer.status in (status if isinstance(status, tuple) else (status,)), answer


def test_path_parameters_on_a_public_path_pass_unchanged(envoy: Envoy) -> None:
    answer = send(envoy, "/status/health;v=2")
    assert answer.upstream is not None and answer.upstream["path"] == "/status/health;v=2", answer


def test_absolute_form_target_is_checked_like_origin_form(envoy: Envoy) -> None:
    answer = send(envoy, "http://gateway.test/orders/1")
    assert answer.status == 401 and answer.upstream is None, answer


ESCAPED_SLASHES = ["/status%2F..%2Forders/1", "/status%2fadmin/users", "/orders%2F1", "/status/..%5Corders/1"]


@pytest.mark.parametrize("target", ESCAPED_SLASHES)
def test_escaped_slashes_are_redirected_never_forwarded(envoy: Envoy, target: str) -> None:
    answer = send(envoy, target)
    assert answer.upstream is None, answer
    assert answer.status in (307, 400), answer
    if answer.status == 307:
        # Following the redirect is a new request, normalised and checked like any other.
        location = answer.headers["location"].split("gateway.test", 1)[-1]
        followed = send(envoy, location)
        assert followed.status == 401 and followed.upstream is None, (location, followed)


def test_backslash_and_encoded_separators_never_reach_a_private_path(envoy: Envoy) -> None:
    for target in ["/status\\..\\orders/1", "/status/..\\orders/1"]:
        answer = send(envoy, target)
        assert answer.upstream is None or not answer.upstream["path"].startswith("/orders"), (target, answer)
        assert answer.status in (400, 401), (target, answer)


# --- protocols -----------------------------------------------------------------------------

CURL = shutil.which("curl")


def curl_h2(envoy: Envoy, path: str, *headers: str) -> tuple[int, dict[str, Any] | None, str]:
    """GET over cleartext HTTP/2 with prior knowledge (the listener's codec is AUTO)."""
    assert CURL, "curl is required for the HTTP/2 tests"
    args = [CURL, "-sS", "--http2-prior-knowledge", "-w", "\n%{http_version} %{http_code}", "--max-time", "10"]
    for header in headers:
        args += ["-H", header]
    out = subprocess.run([*args, f"{envoy.url}{path}"], capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    body, _, trailer = out.stdout.rpartition("\n")
    version, status = trailer.split()
    assert version == "2", f"answered over HTTP/{version}"
    upstream = json.loads(body) if status == "200" and body.startswith("{") else None
    return int(status), upstream, body


def test_http2_enforces_the_same_way(envoy: Envoy) -> None:
    status, upstream, _ = curl_h2(envoy, "/orders/1?page=2", f"x-api-key: {KEY}")
    assert status == 200 and upstream is not None
    assert upstream["path"] == "/orders/1?page=2"
    assert "x-api-key" not in upstream["headers"]
    assert upstream["headers"]["x-tollgate-client"] == "acme/mobile/1"

    status, upstream, _ = curl_h2(envoy, f"/orders/1?apikey={KEY}")
    assert status == 200 and upstream is not None and upstream["path"] == "/orders/1"

    status, _, body = curl_h2(envoy, "/orders/1")
    assert status == 401
    status, _, body = curl_h2(envoy, "/orders/1", f"x-api-key: {UNKNOWN_KEY}")
    assert status == 401 and UNKNOWN_KEY not in body
    status, _, _ = curl_h2(envoy, "/status/admin/users", f"x-api-key: {OTHER_KEY}")
    assert status == 200
    status, _, _ = curl_h2(envoy, "/orders/1", f"x-api-key: {OTHER_KEY}")
    assert status == 403


def test_http2_two_key_headers_first_decides(envoy: Envoy) -> None:
    status, upstream, _ = curl_h2(envoy, "/orders/1", f"x-api-key: {KEY}", f"x-api-key: {UNKNOWN_KEY}")
    assert status == 200 and upstream is not None and "x-api-key" not in upstream["headers"]
    status, _, _ = curl_h2(envoy, "/orders/1", f"x-api-key: {UNKNOWN_KEY}", f"x-api-key: {KEY}")
    assert status == 401


def test_http2_traversal_is_normalised_like_http1(envoy: Envoy) -> None:
    for path in ["/status/%2e%2e/orders/1", "/status/admin/users"]:
        status, upstream, _ = curl_h2(envoy, path)
        assert status == 401 and upstream is None, path
    # curl would resolve `..` itself; --path-as-is sends it raw.
    out = subprocess.run(
        [CURL or "curl", "-sS", "--http2-prior-knowledge", "--path-as-is", "-o", "/dev/null", "-w", "%{http_code}",
         "--max-time", "10", f"{envoy.url}/status/../orders/1"],
        capture_output=True, text=True, timeout=20,
    )
    assert out.stdout == "401", out


# --- a request while a snapshot swap is under way (live mode) -------------------------------

SWAPS = 30  # contract creations and deletions while requests are hammered


def test_requests_during_snapshot_swaps_get_one_revisions_answer(live: LiveProcesses, report_figure) -> None:
    """While a contract is created and deleted over and over (each a new revision swapped in
    by the poller and adopted by every worker), every answer is one that either revision gives:
    200 from the upstream or 403 for the keyed client, 401 without a key; never a 5xx."""
    cp = live.control_plane()
    cp.org("acme")
    cp.locked_plan("acme", "gold", "1", (10_000_000, "day"))
    cp.api_version("acme", "swap", "1", "/swap/v1", plans=(("gold", "1"),))
    key = cp.client_version("acme", "swapper", "1")
    envoy = live.gateway(cp)
    wait_all_workers_enforce(envoy, cp.revision(), deadline_s=30)

    answers: dict[tuple[str, int], int] = {}
    unexpected: list[str] = []
    lock = threading.Lock()
    done = threading.Event()

    def hammer(with_key: bool) -> None:
        session = requests.Session()
        headers = {"x-api-key": key} if with_key else {}
        allowed = {200, 403} if with_key else {401}
        for _ in range(100_000):  # bounded; ends when the swaps do
            if done.is_set():
                break
            response = session.get(f"{envoy.url}/swap/v1/items", headers=headers, timeout=10)
            kind = "keyed" if with_key else "keyless"
            with lock:
                answers[(kind, response.status_code)] = answers.get((kind, response.status_code), 0) + 1
                if response.status_code not in allowed or (
                    response.status_code == 200 and response.json()["headers"].get("x-tollgate-client") != "acme/swapper/1"
                ):
                    unexpected.append(f"{kind}: {response.status_code} {response.text[:200]}")

    threads = [threading.Thread(target=hammer, args=(i != 3,)) for i in range(4)]
    for thread in threads:
        thread.start()
    try:
        contract = None
        for _ in range(SWAPS):
            if contract is None:
                contract = cp.contract("acme/swapper/1", "acme/swap/1", "gold")
            else:
                cp.delete_contract("acme/swapper/1", contract)
                contract = None
            wait_all_workers_enforce(envoy, cp.revision())
    finally:
        done.set()
        for thread in threads:
            thread.join(timeout=30)
    total = sum(answers.values())
    report_figure("requests during snapshot swaps", f"{total} requests over {SWAPS} revisions: {dict(sorted(answers.items()))}")
    assert not unexpected, unexpected[:10]
    assert answers.get(("keyed", 200)) and answers.get(("keyed", 403)), answers
