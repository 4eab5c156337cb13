"""docker-compose.yml and the Envoy configuration it mounts, checked without a Docker engine:
the compose file is valid for Debian's `docker-compose config`, envoy/compose.yaml is exactly
what `tollgate envoy-config` prints for the compose topology and the compose file's demo
secrets (so the two cannot drift apart), and the real Envoy 1.40 accepts it in validate mode.
Two gateways share limits: the control plane counts through the `redis` service, and the
second Envoy runs the same configuration as the first. The `postgres` profile adds two replicas
on one PostgreSQL and a gateway of both: its one-shot services' scripts (the secrets check and
the `envoy-config` command) run here natively, and Envoy accepts the configuration they make.
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


# The services of `docker compose up` without a profile; the postgres profile leaves them be.
DEFAULT_SERVICES = {"redis", "control-plane", "seed", "wasm", "upstream", "envoy", "envoy-2"}
# What every replica of the postgres profile must share, from the environment of compose.
REPLICA_SECRETS = [
    "TOLLGATE_ADMIN_TOKEN",
    "TOLLGATE_GATEWAY_TOKEN",
    "TOLLGATE_SNAPSHOT_SIGNING_KEY",
    "TOLLGATE_SECRETS_KEY",
]
DEMO_SIGNING_KEY = "wsdIFa15p3XKrBpsSXVDsCE-SvWK0AMwDGni9YT4oJ8"


@pytest.mark.parametrize("profile", [[], ["--profile", "postgres"]], ids=["default", "postgres"])
def test_compose_file_is_valid_for_docker_compose(profile: list[str]) -> None:
    if shutil.which("docker-compose") is None:
        pytest.fail("docker-compose is missing: scripts/setup.sh installs it", pytrace=False)
    # Without the replicas' secrets in the environment: the file itself never needs them.
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
    result = subprocess.run(
        ["docker-compose", "--file", str(COMPOSE_FILE), *profile, "config", "--quiet"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
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


# --- profile postgres ------------------------------------------------------------------------


def compose_script(text: str) -> str:
    """A compose command string as the shell gets it (`$$` is compose's escape of `$`)."""
    return text.replace("$$", "$")


def test_the_postgres_profile_leaves_the_default_services_alone(compose: dict[str, Any]) -> None:
    services = compose["services"]
    default = {name for name, service in services.items() if "profiles" not in service}
    assert default == DEFAULT_SERVICES
    for name in set(services) - default:
        assert services[name]["profiles"] == ["postgres"], name
    for name in default:
        assert set(services[name].get("depends_on", {})) <= default, name


def test_two_replicas_share_one_postgres_and_the_secrets_of_the_environment(compose: dict[str, Any]) -> None:
    services = compose["services"]
    postgres = services["postgres"]
    assert postgres["image"] == "postgres:15"
    assert "pg_isready" in postgres["healthcheck"]["test"]
    assert any(v.endswith(":/var/lib/postgresql/data") for v in postgres["volumes"])
    databases = set()
    for name in ("tollgate-a", "tollgate-b"):
        replica = services[name]
        command = replica["command"]
        assert command[0] == "serve", command
        databases.add(command[command.index("--database") + 1])
        # Names only: compose passes the values of its own environment, never demo values.
        assert replica["environment"] == REPLICA_SECRETS, name
        assert replica["depends_on"]["postgres"] == {"condition": "service_healthy"}
        assert replica["depends_on"]["replica-secrets"] == {"condition": "service_completed_successfully"}
    (database,) = databases
    assert database.startswith("postgres://") and "@postgres:5432/" in database
    assert set(services["tollgate-a"]["ports"]).isdisjoint(services["tollgate-b"]["ports"])
    assert services["envoy-postgres"]["environment"] == ["TOLLGATE_GATEWAY_TOKEN"]


def test_replicas_do_not_start_without_every_shared_secret(compose: dict[str, Any]) -> None:
    check = compose["services"]["replica-secrets"]
    assert check["environment"] == REPLICA_SECRETS
    shell, flag, script = check["entrypoint"]
    everything = {name: f"value-of-{name}" for name in REPLICA_SECRETS}
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}

    def run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [shell, flag, compose_script(script)], env={**clean, **env}, capture_output=True, text=True, timeout=30
        )

    assert run(everything).returncode == 0
    for name in REPLICA_SECRETS:
        refused = run({**{k: v for k, v in everything.items() if k != name}, name: ""})
        assert refused.returncode == 1, name
        assert name in refused.stderr, refused.stderr
    refused = run({})
    assert all(name in refused.stderr for name in REPLICA_SECRETS), refused.stderr


def test_the_postgres_gateway_follows_both_replicas_and_envoy_accepts_it(
    compose: dict[str, Any], tollgate: Path, tmp_path: Path, wasm: Path
) -> None:
    services = compose["services"]
    generator = services["gateway-config-postgres"]
    config_volume = next(v for v in generator["volumes"] if v.endswith(":/etc/tollgate"))
    assert f"{config_volume}:ro" in services["envoy-postgres"]["volumes"]
    assert services["envoy-postgres"]["depends_on"]["gateway-config-postgres"] == {
        "condition": "service_completed_successfully"
    }
    # The generator's own command, run here: the binary, the .wasm and the output moved to
    # local paths, the signing key given as compose would pass it.
    shell, flag, script = generator["entrypoint"]
    config = tmp_path / "envoy.yaml"
    script = (
        compose_script(script)
        .replace("tollgate envoy-config", f"{tollgate} envoy-config")
        .replace(WASM_IN_CONTAINER, str(wasm))
        .replace("/etc/tollgate/envoy.yaml", str(config))
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
    env["TOLLGATE_SNAPSHOT_SIGNING_KEY"] = DEMO_SIGNING_KEY
    subprocess.run([shell, flag, script], env=env, check=True, timeout=60, cwd=tmp_path)
    bootstrap = yaml.safe_load(config.read_text())
    (cluster,) = [c for c in bootstrap["static_resources"]["clusters"] if c["name"] == "tollgate_control_plane"]
    endpoints = [
        e["endpoint"]["address"]["socket_address"] for e in cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    ]
    assert endpoints == [
        {"address": "tollgate-a", "port_value": 7100},
        {"address": "tollgate-b", "port_value": 7100},
    ]
    assert cluster["health_checks"][0]["http_health_check"]["path"] == "/healthz"
    result = subprocess.run(
        [str(envoy_binary()), "--mode", "validate", "--config-path", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
