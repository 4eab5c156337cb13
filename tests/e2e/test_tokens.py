"""Tokens end to end: the real control plane issues OAuth2 client-credentials tokens
(`POST /oauth/token`), and a real Envoy (2 workers, live mode) verifies them locally against
the snapshot's trusted issuers. Every refusal answers 401 with the RFC 6750 challenge; a
token and an API key of the same client version spend one counter; key rotation refuses no
token; management tokens carry scopes.

Tokens that must be refused for their claims (expired, not yet valid, wrong audience, unknown
key) are signed by an external issuer the test registers with its own Ed25519 key — the same
path a Keycloak or Entra ID takes.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from harness import Envoy, clear_of_window_end, echoed, problem, remember_secret, wait_until
from live import CHANGE_DEADLINE_S, ControlPlane, LiveProcesses, answered, wait_all_workers_enforce

JWT_API = "/jwt/v1/items"
EITHER_API = "/either/v1/items"
EXTERNAL_ISSUER = "https://idp.example.test/realms/acme"
EXTERNAL_AUDIENCE = "orders-api"
EXTERNAL_KID = "idp-key-1"
EXTERNAL_SUBJECT = "service-account-orders-sync"
CHALLENGE = 'Bearer realm="tollgate"'
SHARED_LIMIT = 4


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_json(value: Any) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class ExternalIdp:
    """An external issuer the test runs: it holds the private key, the control plane gets
    the JWKS."""

    def __init__(self) -> None:
        self.key = Ed25519PrivateKey.generate()
        raw = self.key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        remember_secret(b64url(raw))
        public = self.key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.jwks = {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": b64url(public), "kid": EXTERNAL_KID, "alg": "EdDSA"}]}

    def token(self, kid: str = EXTERNAL_KID, header_extra: dict[str, Any] | None = None, **overrides: Any) -> str:
        now = int(time.time())
        claims = {
            "iss": EXTERNAL_ISSUER,
            "sub": EXTERNAL_SUBJECT,
            "aud": EXTERNAL_AUDIENCE,
            "iat": now,
            "exp": now + 300,
            "jti": str(uuid.uuid4()),
        }
        claims.update(overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        header = {"alg": "EdDSA", "typ": "JWT", "kid": kid, **(header_extra or {})}
        signing_input = f"{b64url_json(header)}.{b64url_json(claims)}"
        signature = self.key.sign(signing_input.encode())
        return remember_secret(f"{signing_input}.{b64url(signature)}")


def credentials(cp: ControlPlane, client: str) -> tuple[str, str]:
    org, name, version = client.split("/")
    issued = cp.ok("POST", f"/v1/orgs/{org}/clients/{name}/versions/{version}/credentials")
    return issued["client_id"], remember_secret(issued["client_secret"])


def token_for(cp: ControlPlane, client_id: str, secret: str, **form: str) -> dict[str, Any]:
    response = requests.post(
        f"{cp.url}/oauth/token",
        data={"grant_type": "client_credentials", **form},
        auth=(client_id, secret),
        timeout=10,
    )
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    remember_secret(body["access_token"])
    return body


def call(envoy: Envoy, path: str, token: str | None = None, key: str | None = None, **headers: str) -> requests.Response:
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    if key is not None:
        headers["x-api-key"] = key
    return requests.get(f"{envoy.url}{path}", headers=headers, timeout=10)


def converge(cp: ControlPlane, envoy: Envoy) -> None:
    wait_all_workers_enforce(envoy, cp.revision())


@pytest.fixture(scope="module")
def idp() -> ExternalIdp:
    return ExternalIdp()


@pytest.fixture(scope="module")
def control_plane(live: LiveProcesses, idp: ExternalIdp) -> ControlPlane:
    cp = live.control_plane()
    cp.org("acme")
    cp.locked_plan("acme", "gold", "1", (1_000_000, "day"))
    cp.locked_plan("acme", "four", "1", (SHARED_LIMIT, "day"))
    for api, prefix, auth in (("jwt", "/jwt/v1", "jwt"), ("either", "/either/v1", "api_key_or_jwt")):
        cp.ok("POST", "/v1/orgs/acme/apis", {"id": api})
        cp.ok(
            "POST",
            f"/v1/orgs/acme/apis/{api}/versions",
            {
                "version": "1",
                "routing": {"path_prefix": prefix, "hosts": []},
                "plans": [{"plan": "gold", "version": "1"}, {"plan": "four", "version": "1"}],
                "auth": auth,
            },
        )
        cp.publish("acme", api, "1")
    cp.ok(
        "POST",
        "/v1/issuers",
        {"issuer": EXTERNAL_ISSUER, "audiences": [EXTERNAL_AUDIENCE], "jwks": idp.jwks, "client_claim": "sub"},
    )
    return cp


@pytest.fixture(scope="module")
def envoy(live: LiveProcesses, control_plane: ControlPlane) -> Envoy:
    envoy = live.gateway(control_plane, unmatched="deny")
    converge(control_plane, envoy)
    return envoy


@pytest.fixture(scope="module")
def app(control_plane: ControlPlane, envoy: Envoy) -> tuple[str, str]:
    """acme/app/1: credentials and a contract on both token APIs through gold."""
    remember_secret(control_plane.client_version("acme", "app", "1"))
    control_plane.contract("acme/app/1", "acme/jwt/1", "gold")
    control_plane.contract("acme/app/1", "acme/either/1", "gold")
    issued = credentials(control_plane, "acme/app/1")
    converge(control_plane, envoy)
    return issued


def test_token_from_oauth_token_is_accepted_at_the_gateway(
    control_plane: ControlPlane, envoy: Envoy, app: tuple[str, str]
) -> None:
    issued = token_for(control_plane, *app)
    assert issued["token_type"] == "Bearer" and issued["scope"] == "tollgate:gateway"
    assert issued["expires_in"] == 3600
    header = json.loads(unb64url(issued["access_token"].split(".")[0]))
    assert header["alg"] == "EdDSA" and header["kid"]
    body = echoed(call(envoy, JWT_API, issued["access_token"]))
    assert body["headers"]["x-tollgate-client"] == "acme/app/1"
    assert body["headers"]["x-tollgate-subject"] == "acme/app/1"
    # RFC 6749 §2.3.1: credentials in the body work the same as HTTP Basic.
    response = requests.post(
        f"{control_plane.url}/oauth/token",
        data={"grant_type": "client_credentials", "client_id": app[0], "client_secret": app[1]},
        timeout=10,
    )
    assert response.status_code == 200
    token = remember_secret(response.json()["access_token"])
    assert call(envoy, EITHER_API, token).status_code == 200


def test_jwt_api_without_a_token_is_challenged(envoy: Envoy, app: tuple[str, str]) -> None:
    response = call(envoy, JWT_API)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == CHALLENGE


def refused_tokens(control_plane: ControlPlane, idp: ExternalIdp, app: tuple[str, str]) -> dict[str, str]:
    own = token_for(control_plane, *app)["access_token"]
    header, payload, signature = own.split(".")
    claims = json.loads(unb64url(payload))
    now = int(time.time())
    forged_claims = dict(claims, sub="acme/admin/1")
    return {
        # 30 s of leeway at the gateway: well past it.
        "expired": idp.token(exp=now - 120, iat=now - 600),
        "not yet valid": idp.token(nbf=now + 600),
        "wrong audience": idp.token(aud="some-other-api"),
        "wrong issuer": idp.token(iss="https://evil.example.test"),
        "tampered": remember_secret(f"{header}.{b64url_json(forged_claims)}.{signature}"),
        "alg none": remember_secret(f"{b64url_json({'alg': 'none', 'typ': 'JWT'})}.{payload}."),
        "alg none, own kid": remember_secret(
            f"{b64url_json({'alg': 'none', 'kid': json.loads(unb64url(header))['kid']})}.{payload}."
        ),
        "unknown kid": idp.token(kid="idp-key-unknown"),
        # The issuer's maximum lifetime (default one day) bounds `exp`.
        "exp in year 9999": idp.token(exp=253_402_300_799),
        # RFC 7515 §4.1.11: an extension the gateway does not understand.
        "crit header": idp.token(header_extra={"crit": ["x-tollgate-test"], "x-tollgate-test": True}),
        "HS256 with the public key as secret": hs256_confusion(idp, claims),
        "garbage": remember_secret("not.a.token-at-all"),
    }


def hs256_confusion(idp: ExternalIdp, claims: dict[str, Any]) -> str:
    import hashlib
    import hmac

    header = b64url_json({"alg": "HS256", "typ": "JWT", "kid": EXTERNAL_KID})
    body = b64url_json(dict(claims, iss=EXTERNAL_ISSUER, aud=EXTERNAL_AUDIENCE, sub=EXTERNAL_SUBJECT))
    secret = idp.jwks["keys"][0]["x"].encode()
    mac = hmac.new(secret, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return remember_secret(f"{header}.{body}.{b64url(mac)}")


def test_bad_tokens_are_refused_with_the_invalid_token_challenge(
    control_plane: ControlPlane, envoy: Envoy, idp: ExternalIdp, app: tuple[str, str]
) -> None:
    # The external identity maps to a client version with a contract, so only the token's
    # own fault can refuse it.
    remember_secret(control_plane.client_version("acme", "sync", "1"))
    control_plane.contract("acme/sync/1", "acme/jwt/1", "gold")
    control_plane.ok(
        "POST", "/v1/orgs/acme/clients/sync/versions/1/subjects", {"issuer": EXTERNAL_ISSUER, "value": EXTERNAL_SUBJECT}
    )
    converge(control_plane, envoy)
    good = echoed(call(envoy, JWT_API, idp.token()))
    assert good["headers"]["x-tollgate-client"] == "acme/sync/1"
    assert good["headers"]["x-tollgate-subject"] == EXTERNAL_SUBJECT

    outcomes = {}
    for case, token in refused_tokens(control_plane, idp, app).items():
        for path in (JWT_API, EITHER_API):
            response = call(envoy, path, token)
            challenge = response.headers.get("www-authenticate", "")
            outcomes[(case, path)] = (response.status_code, challenge.startswith(f'{CHALLENGE}, error="invalid_token"'))
            assert token not in response.text
    wrong = {k: v for k, v in outcomes.items() if v != (401, True)}
    assert not wrong, wrong


def test_forged_subject_header_never_reaches_the_upstream(
    control_plane: ControlPlane, envoy: Envoy, app: tuple[str, str]
) -> None:
    token = token_for(control_plane, *app)["access_token"]
    body = echoed(call(envoy, JWT_API, token, **{"x-tollgate-subject": "acme/admin/1"}))
    assert body["headers"]["x-tollgate-subject"] == "acme/app/1"
    # An API-key call carries no verified subject: a caller's copy is removed, not passed on.
    key = control_plane.client_version("acme", "keyed", "1")
    control_plane.contract("acme/keyed/1", "acme/either/1", "gold")
    converge(control_plane, envoy)
    body = echoed(call(envoy, EITHER_API, key=key, **{"x-tollgate-subject": "acme/admin/1"}))
    assert body["headers"]["x-tollgate-client"] == "acme/keyed/1"
    assert "x-tollgate-subject" not in body["headers"]


def test_a_token_and_the_api_key_of_one_client_share_its_counter(
    control_plane: ControlPlane, envoy: Envoy
) -> None:
    clear_of_window_end("day")
    key = control_plane.client_version("acme", "shared", "1")
    control_plane.contract("acme/shared/1", "acme/either/1", "four")
    token = token_for(control_plane, *credentials(control_plane, "acme/shared/1"))["access_token"]
    converge(control_plane, envoy)
    statuses = []
    for i in range(SHARED_LIMIT):
        statuses.append(call(envoy, EITHER_API, token if i % 2 else None, key=None if i % 2 else key).status_code)
    assert statuses == [200] * SHARED_LIMIT
    assert call(envoy, EITHER_API, token).status_code == 429
    assert call(envoy, EITHER_API, key=key).status_code == 429


def test_key_rotation_refuses_no_token(control_plane: ControlPlane, envoy: Envoy, app: tuple[str, str]) -> None:
    before = token_for(control_plane, *app)["access_token"]
    old_kid = json.loads(unb64url(before.split(".")[0]))["kid"]
    statuses: list[int] = []
    rotated = control_plane.ok("POST", "/v1/token-keys/rotate")
    after = token_for(control_plane, *app)["access_token"]
    new_kid = json.loads(unb64url(after.split(".")[0]))["kid"]
    assert new_kid == rotated["kid"] != old_kid
    assert {k["kid"] for k in rotated["keys"]} == {old_kid, new_kid}
    # Through the rotation's propagation: the old token never fails; the new one works once
    # the gateways hold the new key.
    revision = control_plane.revision()
    deadline = time.monotonic() + CHANGE_DEADLINE_S
    while time.monotonic() < deadline:
        statuses.append(call(envoy, JWT_API, before).status_code)
        if call(envoy, JWT_API, after).status_code == 200:
            break
    wait_all_workers_enforce(envoy, revision)
    assert set(statuses) == {200}
    for _ in range(6):
        assert call(envoy, JWT_API, before).status_code == 200
        assert call(envoy, JWT_API, after).status_code == 200
    jwks = requests.get(f"{control_plane.url}/.well-known/jwks.json", timeout=5).json()
    assert {k["kid"] for k in jwks["keys"]} == {old_kid, new_kid}


def test_management_tokens_carry_scopes(control_plane: ControlPlane, envoy: Envoy, app: tuple[str, str]) -> None:
    def management_token(account: str, scopes: list[str]) -> str:
        created = control_plane.ok("POST", "/v1/service-accounts", {"id": account, "scopes": scopes})
        remember_secret(created["client_secret"])
        return token_for(control_plane, created["client_id"], created["client_secret"])["access_token"]

    def v1(method: str, path: str, token: str, body: Any = None) -> requests.Response:
        return requests.request(
            method, f"{control_plane.url}{path}", json=body, headers={"authorization": f"Bearer {token}"}, timeout=10
        )

    reader = management_token("dashboards", ["tollgate:read"])
    assert v1("GET", "/v1/orgs", reader).status_code == 200
    refused = v1("POST", "/v1/orgs", reader, {"id": "by-reader"})
    assert refused.status_code == 403
    assert problem(refused)["type"] == "urn:tollgate:problem:forbidden"
    assert control_plane.call("GET", "/v1/orgs/by-reader").status_code == 404

    admin = management_token("ci", ["tollgate:admin"])
    assert v1("POST", "/v1/orgs", admin, {"id": "by-ci"}).status_code == 201

    # Audiences keep the two kinds apart.
    gateway_token = token_for(control_plane, *app)["access_token"]
    assert v1("GET", "/v1/orgs", gateway_token).status_code == 401
    response = call(envoy, JWT_API, admin)
    assert response.status_code == 401 and 'error="invalid_token"' in response.headers["www-authenticate"]
    # The static admin token still works.
    assert control_plane.call("GET", "/v1/orgs").status_code == 200


def token_answers(envoy: Envoy, token: str, status: int) -> None:
    """Polls the gateway until the token API answers `status` for `token`."""
    wait_until(
        lambda: call(envoy, JWT_API, token).status_code == status,
        CHANGE_DEADLINE_S,
        f"{JWT_API} to answer {status} for the token",
        interval_s=0.01,
    )


def test_new_credentials_do_not_revive_the_tokens_of_revoked_ones(control_plane: ControlPlane, envoy: Envoy) -> None:
    client = "acme/revived/1"
    remember_secret(control_plane.client_version("acme", "revived", "1"))
    control_plane.contract(client, "acme/jwt/1", "gold")
    old = token_for(control_plane, *credentials(control_plane, client))["access_token"]
    token_answers(envoy, old, 200)

    control_plane.ok("DELETE", "/v1/orgs/acme/clients/revived/versions/1/credentials")
    token_answers(envoy, old, 401)

    new = token_for(control_plane, *credentials(control_plane, client))["access_token"]
    token_answers(envoy, new, 200)
    converge(control_plane, envoy)
    for _ in range(6):
        refused = call(envoy, JWT_API, old)
        assert refused.status_code == 401, "new credentials brought back a token of revoked ones"
        assert 'error="invalid_token"' in refused.headers["www-authenticate"]
        assert call(envoy, JWT_API, new).status_code == 200
