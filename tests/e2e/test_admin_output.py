"""What Envoy's admin interface shows of a gateway's secrets (issue 18 item 4): a gateway
started from `tollgate envoy-config` with the real control plane prints its whole bootstrap
at `/config_dump`, and that holds neither the gateway token nor any signing secret: the token
reaches the module through Envoy's environment (`host_env_keys`, shown by name only), and the
gateway trusts the control plane's Ed25519 public key. By default the admin interface is a
unix socket only Envoy's user may open (mode 0600); `--admin host:port` keeps TCP.

The checks use `curl`, as a local user on the gateway host would.
"""

from __future__ import annotations

import json
import shutil
import stat
import subprocess

import pytest

from harness import START_DEADLINE_S, Envoy, wait_until
from live import CHANGE_DEADLINE_S, SECRETS, ControlPlane, LiveProcesses, answered, gateway_bootstrap

ORDERS = "/orders/v1/items"


@pytest.fixture(scope="module")
def control_plane(live: LiveProcesses) -> ControlPlane:
    cp = live.control_plane()
    cp.org("acme")
    cp.locked_plan("acme", "gold", "1", (1_000_000, "day"))
    cp.api_version("acme", "orders", "1", "/orders/v1", plans=(("gold", "1"),))
    return cp


def curl(*args: str) -> str:
    curl_binary = shutil.which("curl")
    assert curl_binary, "curl is missing"
    out = subprocess.run([curl_binary, "--silent", "--show-error", "--fail", *args], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout


def assert_no_secret(text: str, control_plane: ControlPlane, where: str) -> None:
    for name in SECRETS:
        secret = control_plane.secret(name)
        assert secret not in text, f"{where} holds {name}"


def test_config_dump_over_the_default_unix_socket_holds_no_secret(
    live: LiveProcesses, control_plane: ControlPlane
) -> None:
    key = control_plane.client_version("acme", "mobile", "1")
    control_plane.contract("acme/mobile/1", "acme/orders/1", "gold")
    envoy = live.gateway(control_plane, admin=None)  # envoy-config's default admin address
    # The gateway polls with the token from its environment: the contract is enforced.
    answered(envoy, ORDERS, key, 200, CHANGE_DEADLINE_S)

    socket_path = envoy.cwd / "envoy-admin.sock"
    mode = socket_path.stat().st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600, oct(mode)
    assert envoy.admin_socket == str(socket_path)

    dump = curl("--unix-socket", str(socket_path), "http://localhost/config_dump")
    assert_no_secret(dump, control_plane, "/config_dump")
    assert "TOLLGATE_GATEWAY_TOKEN" in dump, "the token's variable is named, its value is not"
    assert control_plane.public_key() in dump
    bootstrap = json.loads(dump)["configs"][0]["bootstrap"]
    assert "pipe" in bootstrap["admin"]["address"] and "socket_address" not in bootstrap["admin"]["address"]
    assert_no_secret(gateway_bootstrap(control_plane, live.upstream_port, admin=None), control_plane, "envoy-config's output")
    print(f"/config_dump over {socket_path.name} (mode {oct(stat.S_IMODE(mode))}): {len(dump)} bytes, no secret")


def test_config_dump_over_tcp_when_asked_for_holds_no_secret(live: LiveProcesses, control_plane: ControlPlane) -> None:
    envoy: Envoy = live.gateway(control_plane, admin="127.0.0.1:0")
    assert envoy.admin_url.startswith("http://127.0.0.1:")
    dump = curl(f"{envoy.admin_url}/config_dump")
    assert_no_secret(dump, control_plane, "/config_dump")
    assert control_plane.public_key() in dump


def test_a_gateway_without_the_token_in_its_environment_refuses_to_start(
    live: LiveProcesses, control_plane: ControlPlane
) -> None:
    bootstrap = gateway_bootstrap(control_plane, live.upstream_port)
    envoy = Envoy(bootstrap, live.workdir / "gateway-without-token", listener="tollgate", env={"TOLLGATE_GATEWAY_TOKEN": ""})
    try:
        wait_until(
            lambda: "the module's environment has no TOLLGATE_GATEWAY_TOKEN" in envoy.log(),
            START_DEADLINE_S,
            "the poller to refuse its configuration",
        )
        wait_until(envoy.exited, START_DEADLINE_S, "Envoy to exit (it does not serve without its poller)")
    finally:
        envoy.stop()
    assert "list it in vm_config.environment_variables.host_env_keys" in envoy.log()
