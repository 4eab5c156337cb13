"""docker-compose.yml and the Envoy configuration it mounts, checked without a Docker engine:
the compose file is valid for Debian's `docker-compose config`, envoy/compose.yaml is exactly
what `tollgate envoy-config` prints for the compose topology and the compose file's demo
secrets (so the two cannot drift apart), and the real Envoy 1.40 accepts it in validate mode.
Two gateways share limits: the control plane counts through the `redis` service, and the
second Envoy runs the same configuration as the first.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness import REPO, WASM, envoy_binary

COMPOSE_FILE = REPO / "docker-compose.yml"
ENVOY_CONFIG = REPO / "envoy" / "compose.yaml"
TOLLGATE = REPO / "target" / "debug" / "tollgate"

# Where the compose file puts things inside the Envoy container, and the addresses of its
# services; the regeneration command in docker-compose.yml's header uses the same.
WASM_IN_CONTAINER = "/opt/tollgate/tollgate.wasm"
ENVOY_CONFIG_ARGS = [
    "--wasm", WASM_IN_CONTAINER,
    "--listen", "0.0.0.0:10000",
    "--upstream", "upstream:8080",
    "--control-plane", "http://control-plane:7100",
    "--admin", "0.0.0.0:9901",
]  # fmt: skip


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def tollgate() -> Path:
    subprocess.run(["cargo", "build", "--quiet", "-p", "tollgate-control-plane"], cwd=REPO, check=True)
    return TOLLGATE


def test_compose_file_is_valid_for_docker_compose() -> None:
    if shutil.which("docker-compose") is None:
        pytest.fail("docker-compose is missing: scripts/setup.sh installs it", pytrace=False)
    result = subprocess.run(
        ["docker-compose", "--file", str(COMPOSE_FILE), "config", "--quiet"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_compose_pins_envoy_and_mounts_the_committed_config(compose: dict[str, Any]) -> None:
    envoy = compose["services"]["envoy"]
    assert envoy["image"] == "envoyproxy/envoy:v1.40.0"
    assert "./envoy/compose.yaml:/etc/tollgate/envoy.yaml:ro" in envoy["volumes"]
    assert f"gateway-wasm:{Path(WASM_IN_CONTAINER).parent}:ro" in envoy["volumes"]
    assert envoy["command"][:3] == ["envoy", "--config-path", "/etc/tollgate/envoy.yaml"]


def test_two_gateways_share_limits_through_the_redis_service(compose: dict[str, Any]) -> None:
    services = compose["services"]
    redis = services["redis"]
    assert redis["image"].startswith("redis:"), redis["image"]
    command = services["control-plane"]["command"]
    assert command[command.index("--redis") + 1] == "redis://redis:6379", command
    assert services["control-plane"]["depends_on"]["redis"] == {"condition": "service_healthy"}
    first, second = services["envoy"], services["envoy-2"]
    # The same gateway twice: configuration, image, command, token; only the host ports differ.
    for field in ("image", "command", "volumes", "environment", "depends_on"):
        assert second[field] == first[field], field
    assert set(second["ports"]).isdisjoint(first["ports"]), (first["ports"], second["ports"])


def test_envoy_gets_the_gateway_token_in_its_environment_and_its_config_holds_no_secret(
    compose: dict[str, Any],
) -> None:
    secrets = compose["x-demo-secrets"]
    assert compose["services"]["envoy"]["environment"] == {"TOLLGATE_GATEWAY_TOKEN": secrets["TOLLGATE_GATEWAY_TOKEN"]}
    text = ENVOY_CONFIG.read_text()
    for name, value in secrets.items():
        assert value not in text, f"envoy/compose.yaml holds {name}"
    assert "TOLLGATE_GATEWAY_TOKEN" in text, "host_env_keys names the variable"


def test_envoy_config_is_what_tollgate_envoy_config_prints(compose: dict[str, Any], tollgate: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
    env.update(compose["x-demo-secrets"])
    generated = subprocess.run(
        [str(tollgate), "envoy-config", *ENVOY_CONFIG_ARGS],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert generated == ENVOY_CONFIG.read_text(), (
        "envoy/compose.yaml is stale: regenerate it with the command in docker-compose.yml's header"
    )


def test_envoy_accepts_the_compose_config(tmp_path: Path, wasm: Path) -> None:
    # Validate mode loads the filter, so the container's path of the .wasm becomes the
    # locally built one; nothing else changes.
    text = ENVOY_CONFIG.read_text()
    assert text.count(WASM_IN_CONTAINER) == 2, "the filter and the poller load the .wasm"
    config = tmp_path / "envoy.yaml"
    config.write_text(text.replace(WASM_IN_CONTAINER, str(WASM)))
    result = subprocess.run(
        [str(envoy_binary()), "--mode", "validate", "--config-path", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "configuration" in result.stdout + result.stderr and "OK" in result.stdout + result.stderr
