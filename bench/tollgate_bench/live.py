"""Live mode as users run it, for parts 3 and 4: the real control plane (`tollgate serve` on a
loopback port the kernel picks, its own data directory, fixed secrets) and Envoys started from
the bootstrap `tollgate envoy-config` prints. The same ideas as tests/e2e/live.py (pinned
keep-alive connections per worker, per-worker listener stats), over the bench's supervisor.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import secrets
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from . import envoy as e
from .context import REPO, Bench
from .processes import wait_until

START_DEADLINE_S = 120.0
# Fixed secrets: the bench writes the data directory itself (scale), so it must know them.
SECRETS = {
    "TOLLGATE_ADMIN_TOKEN": "bench-admin-token-0123456789abcdef",
    "TOLLGATE_GATEWAY_TOKEN": "bench-gateway-token-0123456789abcdef",
    # An Ed25519 seed (32 bytes, base64url): envoy-config puts its public key in the bootstrap.
    "TOLLGATE_SNAPSHOT_SIGNING_KEY": "YmVuY2gtc25hcHNob3Qtc2lnbmluZy1rZXktMDEyMzQ",
}
# What a replica on PostgreSQL also needs (issue 14): the key that seals the secrets replicas
# keep in the shared database. Random per run, the same for every replica of the run.
POSTGRES_SECRETS = {"TOLLGATE_SECRETS_KEY": secrets.token_urlsafe(32)}
LISTENING = re.compile(rb"tollgate control plane listening on http://(\S+)")


def tollgate_binary(bench: Bench) -> Path:
    """The release control plane for a full run (bench/run builds it); --quick uses the debug
    build scripts/test.sh already made, since timings are not the point there. Copied into the
    run's directory on first use, so a rebuild of target/ by someone else during the run cannot
    change what is measured."""
    copy = bench.workdir / "tollgate-control-plane"
    if copy.exists():
        return copy
    profile = "debug" if bench.quick else "release"
    binary = REPO / "target" / profile / "tollgate"
    if not binary.exists():
        raise RuntimeError(f"no {binary}: cargo build {'' if bench.quick else '--release '}-p tollgate-control-plane")
    shutil.copy2(binary, copy)
    return copy


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
    env.update(SECRETS)
    return env


def gateway_env() -> dict[str, str]:
    """What a live-mode Envoy needs in its environment: the gateway token (envoy-config names
    it in host_env_keys, so it never shows in the admin interface's config_dump)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
    env["TOLLGATE_GATEWAY_TOKEN"] = SECRETS["TOLLGATE_GATEWAY_TOKEN"]
    return env


class ControlPlane:
    """`tollgate serve --data-dir <dir> [--database URL] [args]`; `start` returns once /healthz
    answers. With `database` (a `postgres://` URL) the catalogue is in PostgreSQL, which
    several control planes (replicas, each with a data directory of its own) may share."""

    def __init__(self, bench: Bench, name: str, debug: bool = False, args: tuple[str, ...] = (), database: str | None = None) -> None:
        self.bench = bench
        self.name = name
        # More `serve` options, e.g. `--redis URL` for fleet-wide counting.
        self.args = args
        self.database_url = database
        # RUST_LOG=tollgate_control_plane=debug: per-revision render_ms/verify_ms in the log.
        self.debug = debug
        self.binary = tollgate_binary(bench)
        self.data_dir = bench.workdir / name / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = bench.workdir / name / "control-plane.log"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        # Seconds from exec to /healthz of the last start (opening renders the snapshot).
        self.start_seconds = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def database(self) -> Path:
        """The SQLite file (without `database`)."""
        return self.data_dir / "tollgate.db"

    def start(self, cpus: str | None = None, deadline_s: float = START_DEADLINE_S) -> "ControlPlane":
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        started = time.monotonic()
        argv = [str(self.binary), "serve", "--listen", f"127.0.0.1:{self.port}", "--data-dir", str(self.data_dir), *self.args]
        env = clean_env()
        if self.database_url is not None:
            argv += ["--database", self.database_url]
            env.update(POSTGRES_SECRETS)
        if self.debug:
            env["RUST_LOG"] = "tollgate_control_plane=debug"
        self.process = self.bench.supervisor.start(argv, self.log_path, cpus=cpus, env=env, append=True)

        def listening() -> str | None:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"tollgate serve exited with {self.process.returncode}:\n{self.log_tail()}")
            with open(self.log_path, "rb") as log:
                log.seek(offset)
                match = LISTENING.search(log.read())
            return match.group(1).decode() if match else None

        address = wait_until(listening, deadline_s, f"control plane {self.name} to listen", interval_s=0.02)
        self.port = int(address.rsplit(":", 1)[1])
        wait_until(lambda: self.healthz() is not None, deadline_s, f"control plane {self.name} /healthz", interval_s=0.02)
        self.start_seconds = time.monotonic() - started
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.bench.supervisor.stop(self.process, grace_s=30.0)
            self.process = None

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def healthz(self) -> dict[str, Any] | None:
        try:
            status, body = e.http_get(f"{self.url}/healthz", timeout_s=5)
        except OSError:
            return None
        return json.loads(body) if status == 200 else None

    def revision(self) -> int:
        health = self.healthz()
        if health is None:
            raise RuntimeError(f"control plane {self.name} is not healthy")
        return int(health["revision"])

    # --- the management API ---

    def call(self, method: str, path: str, body: Any = None, timeout_s: float = 600.0) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.url}{path}",
            data=data,
            method=method,
            headers={"authorization": f"Bearer {SECRETS['TOLLGATE_ADMIN_TOKEN']}", "content-type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                raw = response.read()
                return response.status, (json.loads(raw) if raw else None)
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(errors="replace")

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, answer = self.call(method, path, body)
        if not 200 <= status < 300:
            raise RuntimeError(f"control plane {self.name}: {method} {path} answered {status}: {answer}")
        return answer

    def ensure(self, method: str, path: str, body: Any = None) -> None:
        """A create that may already exist (409)."""
        status, answer = self.call(method, path, body)
        if not (200 <= status < 300 or status == 409):
            raise RuntimeError(f"control plane {self.name}: {method} {path} answered {status}: {answer}")

    def seed(self, org: str, plan: str, limits: list[tuple[int, str]], api: str, prefix: str) -> None:
        """An org, a locked plan version `1` with `limits`, and a published private API
        version `1` at `prefix` offering it."""
        self.ensure("POST", "/v1/orgs", {"id": org, "name": org})
        self.ensure("POST", f"/v1/orgs/{org}/plans", {"id": plan, "name": plan})
        self.ok("POST", f"/v1/orgs/{org}/plans/{plan}/versions", {"version": "1", "limits": [{"requests": n, "per": p} for n, p in limits]})
        self.ok("POST", f"/v1/orgs/{org}/plans/{plan}/versions/1/lock")
        self.ensure("POST", f"/v1/orgs/{org}/apis", {"id": api, "name": api})
        self.ok(
            "POST",
            f"/v1/orgs/{org}/apis/{api}/versions",
            {"version": "1", "public": False, "routing": {"path_prefix": prefix, "hosts": []}, "plans": [{"plan": plan, "version": "1"}]},
        )
        self.ok("POST", f"/v1/orgs/{org}/apis/{api}/versions/1/publish")

    def client_version(self, org: str, client: str) -> str:
        self.ensure("POST", f"/v1/orgs/{org}/clients", {"id": client, "name": client})
        return str(self.ok("POST", f"/v1/orgs/{org}/clients/{client}/versions", {"version": "1"})["api_key"])

    def contract(self, org: str, client: str, api: str, plan: str) -> int:
        created = self.ok(
            "POST",
            f"/v1/orgs/{org}/clients/{client}/versions/1/contracts",
            {"api_org": org, "api": api, "api_version": "1", "plan": plan},
        )
        return int(created["id"])

    def delete_contract(self, org: str, client: str, contract_id: int) -> None:
        self.ok("DELETE", f"/v1/orgs/{org}/clients/{client}/versions/1/contracts/{contract_id}")

    def snapshot_pages(self) -> tuple[int, int, float]:
        """Fetches the current revision as a gateway does, following `next`: (pages, bytes,
        seconds)."""
        headers = {"authorization": f"Bearer {SECRETS['TOLLGATE_GATEWAY_TOKEN']}"}
        started = time.monotonic()
        path, pages, size = "/v1/snapshot", 0, 0
        for _ in range(10_000):
            status, body = e.http_get(f"{self.url}{path}", headers, timeout_s=600)
            if status != 200:
                raise RuntimeError(f"control plane {self.name}: {path} answered {status}")
            pages += 1
            size += len(body)
            cursor = json.loads(body).get("next")
            if not cursor:
                return pages, size, time.monotonic() - started
            path = f"/v1/snapshot?cursor={cursor}"
        raise RuntimeError("the snapshot did not end within 10,000 pages")


# --- gateways ------------------------------------------------------------------------------


def gateway(bench: Bench, control_plane_url: str, name: str, upstream_port: int, concurrency: int, cpus: str | None) -> e.Envoy:
    """An Envoy (not started) with the bootstrap `tollgate envoy-config` prints for the control
    plane at `control_plane_url` (secrets from SECRETS), loading the bench's copy of the
    module; unmatched requests are denied."""
    out = subprocess.run(
        [
            str(tollgate_binary(bench)),
            "--data-dir", str(bench.workdir),
            "envoy-config",
            "--wasm", str(bench.tollgate_wasm),
            "--listen", "127.0.0.1:0",
            "--upstream", f"127.0.0.1:{upstream_port}",
            "--control-plane", control_plane_url,
            "--admin", "127.0.0.1:0",
            "--concurrency", str(concurrency),
            "--unmatched", "deny",
        ],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"tollgate envoy-config failed: {out.stderr}")
    config = yaml.safe_load(out.stdout)
    return e.Envoy(name, config, bench.workdir, concurrency=concurrency, cpus=cpus, env=gateway_env())


def upstream(bench: Bench) -> e.Envoy:
    """An Envoy answering every request with `direct_response` 200: the service behind the
    gateways, never the bottleneck."""
    return e.Envoy(
        "upstream", e.bootstrap([e.listener("upstream", [], [e.direct_response_route("/")])]), bench.workdir, concurrency=1, cpus=bench.cpus.load
    ).start(bench.supervisor, bench.envoy_binary)


def listener_name(envoy: e.Envoy) -> str:
    return next(iter(envoy.ports))


def status_of(connection: http.client.HTTPConnection, path: str, key: str | None) -> int:
    connection.request("GET", path, headers={"x-api-key": key} if key else {})
    response = connection.getresponse()
    response.read()
    return response.status


def worker_connections(envoy: e.Envoy, workers: int, attempts: int = 64) -> list[http.client.HTTPConnection]:
    """One keep-alive connection per worker thread: a connection stays on the worker that
    accepted it, and Envoy's per-worker listener stats tell which one that was."""
    port = envoy.ports[listener_name(envoy)]

    def accepted() -> dict[str, int]:
        return {name.split(".")[-2]: v for name, v in envoy.stats(r"listener\.127\.0\.0\.1_\d+\.worker_\d+\.downstream_cx_total$").items()}

    found: dict[str, http.client.HTTPConnection] = {}
    for _ in range(attempts):
        before = accepted()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        status_of(connection, "/", None)
        grown = [w for w, total in accepted().items() if total > before.get(w, 0)]
        if len(grown) == 1 and grown[0] not in found:
            found[grown[0]] = connection
        else:
            connection.close()
        if len(found) == workers:
            return [found[w] for w in sorted(found)]
    raise RuntimeError(f"no connection to every worker after {attempts} tries: {sorted(found)}")
