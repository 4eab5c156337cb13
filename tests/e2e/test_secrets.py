"""Secrets: which token opens which door, secret files private, the control plane on loopback
unless told otherwise, and the session-wide check that no key reaches a log (conftest.py's
`no_secret_in_any_log`) really sees the logs.

Token comparison in constant time is in the code, not here (a timing test on a shared machine
proves nothing): control-plane/src/secrets.rs `BearerToken::matches`, see SECURITY.md.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
from pathlib import Path

import pytest
import requests

import harness
from harness import Envoy, envoy_bootstrap, wait_until
from live import TOLLGATE, ControlPlane, LiveProcesses, sqlite_only

WRONG_TOKEN = "secrets-not-a-token-3f8a1c9d"


@pytest.fixture(scope="module")
def control_plane(live: LiveProcesses) -> ControlPlane:
    return live.control_plane()


def call(cp: ControlPlane, path: str, token: str | None) -> requests.Response:
    headers = {"authorization": f"Bearer {token}"} if token is not None else {}
    return requests.get(f"{cp.url}{path}", headers=headers, timeout=10)


def test_snapshot_endpoint_refuses_the_admin_token(control_plane: ControlPlane) -> None:
    admin, gateway = control_plane.secret("TOLLGATE_ADMIN_TOKEN"), control_plane.secret("TOLLGATE_GATEWAY_TOKEN")
    assert call(control_plane, "/v1/snapshot", gateway).status_code == 200
    for token in (admin, None, WRONG_TOKEN, gateway + "x", gateway[:-1], ""):
        response = call(control_plane, "/v1/snapshot", token)
        assert response.status_code == 401, (token and token[:4], response.text)
        assert not token or token not in response.text


def test_management_api_refuses_the_gateway_token(control_plane: ControlPlane) -> None:
    admin, gateway = control_plane.secret("TOLLGATE_ADMIN_TOKEN"), control_plane.secret("TOLLGATE_GATEWAY_TOKEN")
    assert call(control_plane, "/v1/orgs", admin).status_code == 200
    for token in (gateway, None, WRONG_TOKEN, admin + "x", admin.upper(), ""):
        response = call(control_plane, "/v1/orgs", token)
        assert response.status_code == 401, (token and token[:4], response.text)
        assert not token or token not in response.text
    write = requests.post(f"{control_plane.url}/v1/orgs", json={"id": "by-gateway"},
                          headers={"authorization": f"Bearer {gateway}"}, timeout=10)
    assert write.status_code == 401
    assert call(control_plane, "/v1/orgs/by-gateway", admin).status_code == 404


@sqlite_only("replicas on PostgreSQL take every secret from the environment; none is generated into the data directory")
def test_secret_files_are_private(control_plane: ControlPlane) -> None:
    data_dir = control_plane.data_dir
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    for name in ("admin-token", "gateway-token", "snapshot-signing-key"):
        mode = stat.S_IMODE((data_dir / name).stat().st_mode)
        assert mode == 0o600, f"{name}: {oct(mode)}"
    tokens = {control_plane.secret(n) for n in ("TOLLGATE_ADMIN_TOKEN", "TOLLGATE_GATEWAY_TOKEN", "TOLLGATE_SNAPSHOT_SIGNING_KEY")}
    assert len(tokens) == 3 and all(len(t) >= 32 for t in tokens)
    log = control_plane.log()
    assert all(t not in log for t in tokens)
    assert str(data_dir / "admin-token") in log  # the path is printed, never the value


def test_control_plane_binds_loopback_by_default(tmp_path: Path) -> None:
    """`tollgate serve` with no --listen and no TOLLGATE_LISTEN: 127.0.0.1:7100. Should another
    process hold that port, the refusal names the address it tried, which is as good a proof."""
    log_path = tmp_path / "default-listen.log"
    harness.LOGS.add(log_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
    with open(log_path, "wb") as log:
        process = subprocess.Popen([str(TOLLGATE), "serve", "--data-dir", str(tmp_path / "data")],
                                   stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    try:
        said = wait_until(
            lambda: "127.0.0.1:7100" in (text := log_path.read_text(errors="replace")) and text,
            30, "the control plane to say where it listens",
        )
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)
    assert "listening on http://127.0.0.1:7100" in said or "listening on 127.0.0.1:7100" in said, said
    assert "0.0.0.0" not in said and "[::]" not in said


def test_the_log_check_sees_the_logs_of_every_process(upstream, wasm) -> None:
    """The session's key-in-logs check reads every log: processes that got no directory log
    under the session's temporary directory and are kept, and every log path is registered."""
    assert harness.SCRATCH is not None
    assert upstream.log_path in harness.LOGS
    envoy = Envoy.start(envoy_bootstrap(upstream.port, None))
    envoy.stop()
    assert envoy.log_path in harness.LOGS and envoy.log_path.exists()
    assert harness.SCRATCH in envoy.log_path.parents
