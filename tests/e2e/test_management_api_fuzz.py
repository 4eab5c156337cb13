"""The management API against its own OpenAPI document, with schemathesis (pinned in
tests/requirements.txt): every operation of `GET /openapi.json` of a running `tollgate serve`,
with valid and invalid requests (examples, coverage, fuzzing and stateful phases), bounded by a
number of examples per operation and a fixed seed so a run is repeatable and takes seconds.

Checks: every schemathesis check except `positive_data_acceptance` — no 5xx, status codes,
content types, headers and bodies as documented, invalid input refused, auth not ignored,
deleted resources gone. `positive_data_acceptance` fails because the document states fewer
constraints than the server enforces (slug patterns, ranges); that is recorded as a strict
xfail below and in SECURITY.md rather than hidden. For `GET /v1/snapshot`
`negative_data_rejection` is off: the document calls `wait` and `since` int64 (utoipa's format
for u64), so schemathesis expects 2^63 to be refused, and the server reads a u64 and caps `wait`
at 60 s (harmless; SECURITY.md).

Two runs on one control plane: anywhere (random identifiers, mostly 400/404), and inside the
demo catalogue (identifiers pinned to `acme`, `gold`, `orders`, `mobile-app`, version 1, contract
1) so that writes reach the lifecycle rules: locks, publishes, retirements, rotations, contracts.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from harness import REPO, remember_secret
from live import TOLLGATE, ControlPlane, LiveProcesses

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
SEED = 20261124
# Per operation and phase; 40 operations × 4 phases. With 15 a run takes
MAX_EXAMPLES = 15
RUN_DEADLINE_S = 300

_CONFIG = """\
headers = {{ Authorization = "Bearer ${{TOLLGATE_ADMIN_TOKEN}}" }}
request-timeout = 30.0

[checks]
positive_data_acceptance = {{ enabled = false }}
{parameters}
[[operations]]
include-path = "/v1/snapshot"
headers = {{ Authorization = "Bearer ${{TOLLGATE_GATEWAY_TOKEN}}" }}
checks = {{ negative_data_rejection = {{ enabled = false }} }}
"""

_IN_CATALOGUE = """
[parameters]
org = "acme"
plan = "gold"
api = "orders"
client = "mobile-app"
version = "1"
contract_id = 1
"""


@pytest.fixture(scope="module")
def control_plane(live: LiveProcesses) -> ControlPlane:
    token = remember_secret("admin-" + secrets.token_urlsafe(24))
    control_plane = live.control_plane(env={"TOLLGATE_ADMIN_TOKEN": token})
    applied = subprocess.run(
        [str(TOLLGATE), "--server", control_plane.url, "apply", "-f", str(REPO / "demo" / "catalogue.yaml")],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "TOLLGATE_ADMIN_TOKEN": token},
    )
    assert applied.returncode == 0, applied.stderr
    for key in re.findall(r"\btg_[A-Za-z0-9_-]+", applied.stdout):
        remember_secret(key)
    return control_plane


def run_schemathesis(control_plane: ControlPlane, name: str, parameters: str, workdir: Path) -> tuple[int, str]:
    config = workdir / f"{name}.toml"
    config.write_text(_CONFIG.format(parameters=parameters))
    log = workdir / f"schemathesis-{name}.log"
    env = {
        **os.environ,
        "TOLLGATE_ADMIN_TOKEN": control_plane.secret("TOLLGATE_ADMIN_TOKEN"),
        "TOLLGATE_GATEWAY_TOKEN": control_plane.secret("TOLLGATE_GATEWAY_TOKEN"),
    }
    with open(log, "wb") as out:
        finished = subprocess.run(
            [
                str(SCHEMATHESIS), "--config-file", str(config),
                "run", f"{control_plane.url}/openapi.json",
                "--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED),
                "--workers", "1", "--generation-database", "none", "--no-color",
                "--output-sanitize", "true",
            ],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=workdir, env=env, timeout=RUN_DEADLINE_S,
        )
    return finished.returncode, log.read_text(errors="replace")


@pytest.mark.parametrize("name, parameters", [("anywhere", ""), ("in-catalogue", _IN_CATALOGUE)])
def test_every_operation_answers_as_documented(
    control_plane: ControlPlane, name: str, parameters: str, tmp_path: Path, report_figure
) -> None:
    started = time.monotonic()
    status, output = run_schemathesis(control_plane, name, parameters, tmp_path)
    elapsed = time.monotonic() - started
    summary = re.search(r"Test cases:\s*\n\s*(.+)", output)
    tested = re.search(r"Tested: (\d+)", output)
    report_figure(
        f"schemathesis {name}",
        f"{summary.group(1).strip() if summary else '?'}; {tested.group(1) if tested else '?'} operations; {elapsed:.0f} s",
    )
    assert status == 0, f"schemathesis found failures (exit {status}):\n{output[-12000:]}"
    assert "Tested: 40" in output or (tested and int(tested.group(1)) >= 35), output[-3000:]
    assert control_plane.running(), "the control plane died under schemathesis"
    assert "panicked" not in control_plane.log()


def _document(control_plane: ControlPlane) -> dict:
    return requests.get(f"{control_plane.url}/openapi.json", timeout=10).json()


def _request_bodies(document: dict) -> dict[str, dict]:
    """The schema of every operation's JSON request body, by operation."""
    schemas = document["components"]["schemas"]
    bodies = {}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            body = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if body:
                ref = body["schema"]["$ref"].rsplit("/", 1)[-1]
                bodies[f"{method.upper()} {path} ({ref})"] = schemas[ref]
    return bodies


def test_unknown_fields_are_documented_as_refused(control_plane: ControlPlane) -> None:
    """Decision: unknown body fields are refused (400 invalid-body naming the field), never
    ignored, so a typo (`nmae`) cannot silently drop a setting (test_management_api_input.py
    checks the server); the document says so with `additionalProperties: false` on every
    request body."""
    bodies = _request_bodies(_document(control_plane))
    assert len(bodies) >= 15, sorted(bodies)
    for operation, schema in bodies.items():
        assert schema.get("additionalProperties") is False, operation


@pytest.mark.xfail(
    strict=True,
    reason="the OpenAPI document states fewer constraints than the server enforces: no slug "
    "pattern [a-z0-9][a-z0-9-]{0,63} on ids (path and body), no version pattern, no 1–500 range "
    "on `limit`, and no additionalProperties: false on nested RateLimit / Routing (the server "
    "refuses unknown fields there too); schemathesis positive_data_acceptance reports "
    "documented-valid requests answered 400",
)
def test_document_states_the_constraints_the_server_enforces(control_plane: ControlPlane) -> None:
    document = _document(control_plane)
    schemas = document["components"]["schemas"]
    problems = []
    if "pattern" not in schemas["CreateOrg"]["properties"]["id"]:
        problems.append("CreateOrg.id has no pattern")
    org = next(p for p in document["paths"]["/v1/orgs/{org}"]["get"]["parameters"] if p["name"] == "org")
    if "pattern" not in org["schema"]:
        problems.append("path parameter org has no pattern")
    limit = next(p for p in document["paths"]["/v1/orgs"]["get"]["parameters"] if p["name"] == "limit")
    if "maximum" not in limit["schema"]:
        problems.append("query parameter limit has no maximum")
    for nested in ("RateLimit", "Routing"):
        if schemas[nested].get("additionalProperties") is not False:
            problems.append(f"{nested} does not refuse unknown fields")
    assert not problems, problems
