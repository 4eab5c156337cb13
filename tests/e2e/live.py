"""Live mode as users run it: the real control plane (`tollgate serve`, a child process on a
loopback port with its own data directory) and Envoys started from the bootstrap that
`tollgate envoy-config` prints, polling that control plane for signed snapshots.

The control plane can be killed (SIGKILL) and restarted on the same data directory and port, so
the gateways that point at it find it again; every process is stopped by its fixture, and as a
last resort by harness at interpreter exit.

The catalogue is in SQLite in the data directory, or with `TOLLGATE_TEST_BACKEND=postgres` (the
variable the Rust tests read too) in a fresh database of the session's private PostgreSQL for
each control plane, its secrets then given in the environment as replicas on PostgreSQL need
them. Tests of the SQLite data directory itself are marked `sqlite_only(why)`.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import secrets
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests
import yaml

from harness import (
    LOGS,
    REPO,
    START_DEADLINE_S,
    WORKERS,
    Envoy,
    _live,
    _stop,
    prometheus_samples,
    remember_secret,
    wait_until,
)

if TYPE_CHECKING:  # postgres.py imports fleet.py, which imports this module
    from postgres import Postgres

TOLLGATE = REPO / "target" / "debug" / "tollgate"

# The poller retries with capped backoff (10 s at most, DESIGN.md §4): after an outage a
# gateway may take that long, plus one poll, to find the control plane again.
RECONNECT_DEADLINE_S = 30.0
# How long a single change may take to reach a gateway before a test calls it lost. The
# product's target is 200 ms at p99; this bound only guards against flakes on a loaded machine.
CHANGE_DEADLINE_S = 5.0


def _clean_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
    env.update(extra)
    return env


# --- the backend ---------------------------------------------------------------------------


def on_postgres() -> bool:
    """Whether live-mode control planes keep their catalogue in PostgreSQL."""
    return os.environ.get("TOLLGATE_TEST_BACKEND") == "postgres"


def sqlite_only(why: str) -> pytest.MarkDecorator:
    """Marks a test of SQLite's data directory (its files, its lock, secrets generated into it):
    on PostgreSQL it says it does not apply, and why."""
    return pytest.mark.skipif(on_postgres(), reason=f"not on PostgreSQL: {why}")


# Shared secrets a replica on PostgreSQL requires from its environment (every replica of one
# database the same); TOLLGATE_SECRETS_KEY encrypts the token-signing keys stored there.
REPLICA_SECRETS = (
    "TOLLGATE_ADMIN_TOKEN",
    "TOLLGATE_GATEWAY_TOKEN",
    "TOLLGATE_SNAPSHOT_SIGNING_KEY",
    "TOLLGATE_SECRETS_KEY",
)


def replica_secrets() -> dict[str, str]:
    """Fresh values of REPLICA_SECRETS (32 random bytes each, base64url), registered for the
    session's log check."""
    return {name: remember_secret(secrets.token_urlsafe(32)) for name in REPLICA_SECRETS}


_databases = itertools.count()


def fresh_database(postgres: Postgres, prefix: str = "live") -> str:
    """The URL of a new database in `postgres`, named apart from every other of the session."""
    return postgres.create_database(f"{prefix}_{next(_databases)}")


# --- the control plane ---------------------------------------------------------------------

# The control plane's secrets: environment variable → file in its data directory.
SECRETS = {
    "TOLLGATE_ADMIN_TOKEN": "admin-token",
    "TOLLGATE_GATEWAY_TOKEN": "gateway-token",
    "TOLLGATE_SNAPSHOT_SIGNING_KEY": "snapshot-signing-key",
}


class ControlPlaneFailedToStart(RuntimeError):
    pass


class ControlPlane:
    """`tollgate serve` on `data_dir`. `port=0` lets the first start pick a port; restarts keep
    it. `env` (e.g. secrets) applies to every start; `start(env=…)` adds to it for one run.
    `args` go to `tollgate serve` on every start (e.g. `--redis URL`, `--database URL`)."""

    def __init__(
        self,
        data_dir: Path,
        port: int = 0,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
    ) -> None:
        self.data_dir = data_dir
        self.port = port
        self.env = dict(env or {})
        self.args = tuple(args)
        self.log_path = data_dir.parent / f"{data_dir.name}.log"
        LOGS.add(self.log_path)
        self.process: subprocess.Popen[bytes] | None = None
        # The extra environment of the current run (e.g. a wrong snapshot secret).
        self.run_env: dict[str, str] = {}
        self._session = requests.Session()

    @property
    def url(self) -> str:
        assert self.port, "the control plane has no port until it first starts"
        return f"http://127.0.0.1:{self.port}"

    def start(self, env: dict[str, str] | None = None) -> "ControlPlane":
        assert not self.running(), "already running"
        self.run_env = dict(env or {})
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    str(TOLLGATE),
                    "serve",
                    "--listen", f"127.0.0.1:{self.port}",
                    "--data-dir", str(self.data_dir),
                    *self.args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=_clean_env({**self.env, **self.run_env}),
            )
        _live.append(self.process)
        try:
            address = wait_until(lambda: self._listening(offset), START_DEADLINE_S, "the control plane to listen")
            self.port = int(address.rsplit(":", 1)[1])
            wait_until(self._healthy, START_DEADLINE_S, "the control plane's /healthz")
        except BaseException as error:
            self.stop()
            raise ControlPlaneFailedToStart(f"{error}\n--- control plane log ---\n{self.log()[-4000:]}") from None
        for name in SECRETS:
            remember_secret(self.secret(name))
        return self

    @property
    def database(self) -> str | None:
        """The `--database` URL this control plane keeps its catalogue in, if PostgreSQL."""
        args = list(self.args)
        return args[args.index("--database") + 1] if "--database" in args else None

    def _listening(self, offset: int) -> str | None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise ControlPlaneFailedToStart(f"tollgate serve exited with status {self.process.returncode}")
        with open(self.log_path, "rb") as log:
            log.seek(offset)
            match = re.search(rb"tollgate control plane listening on http://(\S+)", log.read())
        return match.group(1).decode() if match else None

    def _healthy(self) -> bool:
        try:
            return requests.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown of any kind, open long polls are cut."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        self.stop()

    def restart(self, env: dict[str, str] | None = None) -> "ControlPlane":
        self.kill()
        return self.start(env)

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def public_key(self, signing_key: str | None = None) -> str:
        """`tollgate snapshot-public-key`: of `signing_key` (a seed), else of the key this
        control plane runs with."""
        env = _clean_env({**self.env, **self.run_env})
        if signing_key:
            env["TOLLGATE_SNAPSHOT_SIGNING_KEY"] = signing_key
        out = subprocess.run(
            [str(TOLLGATE), "--data-dir", str(self.data_dir), "snapshot-public-key"],
            capture_output=True, text=True, env=env, timeout=30,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    def secret(self, name: str) -> str:
        """A secret as the control plane reads it: its environment, else its data directory."""
        if name in self.env:
            return self.env[name]
        return (self.data_dir / SECRETS[name]).read_text().strip()

    # --- the management API (DESIGN.md §3) ---

    def call(self, method: str, path: str, body: Any = None) -> requests.Response:
        return self._session.request(
            method,
            f"{self.url}{path}",
            json=body,
            headers={"authorization": f"Bearer {self.secret('TOLLGATE_ADMIN_TOKEN')}"},
            timeout=30,
        )

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        """Calls the API and requires a 2xx; returns the JSON body (None when empty)."""
        response = self.call(method, path, body)
        assert 200 <= response.status_code < 300, f"{method} {path}: {response.status_code} {response.text}"
        return response.json() if response.content else None

    def revision(self) -> int:
        """The latest committed snapshot revision."""
        return int(requests.get(f"{self.url}/healthz", timeout=5).json()["revision"])

    def org(self, org: str) -> None:
        self.ok("POST", "/v1/orgs", {"id": org})

    def locked_plan(self, org: str, plan: str, version: str, *limits: tuple[int, str]) -> None:
        """Plan `org/plan` (created if new) with a locked `version` of these limits."""
        self._create_owned(org, "plans", plan)
        self.ok(
            "POST",
            f"/v1/orgs/{org}/plans/{plan}/versions",
            {"version": version, "limits": [{"requests": n, "per": per} for n, per in limits]},
        )
        self.ok("POST", f"/v1/orgs/{org}/plans/{plan}/versions/{version}/lock")

    def api_version(
        self,
        org: str,
        api: str,
        version: str,
        path_prefix: str,
        plans: tuple[tuple[str, str], ...] = (),
        public: bool = False,
        publish: bool = True,
    ) -> None:
        """API `org/api` (created if new) with a draft `version` offering `plans` ((plan,
        version) pairs of the same org), published unless `publish` is false."""
        self._create_owned(org, "apis", api)
        self.ok(
            "POST",
            f"/v1/orgs/{org}/apis/{api}/versions",
            {
                "version": version,
                "public": public,
                "routing": {"path_prefix": path_prefix, "hosts": []},
                "plans": [{"plan": p, "version": v} for p, v in plans],
            },
        )
        if publish:
            self.publish(org, api, version)

    def publish(self, org: str, api: str, version: str) -> None:
        self.ok("POST", f"/v1/orgs/{org}/apis/{api}/versions/{version}/publish")

    def retire(self, org: str, api: str, version: str) -> None:
        self.ok("POST", f"/v1/orgs/{org}/apis/{api}/versions/{version}/retire")

    def client_version(self, org: str, client: str, version: str) -> str:
        """Client `org/client` (created if new) with a new `version`; returns its API key."""
        self._create_owned(org, "clients", client)
        created = self.ok("POST", f"/v1/orgs/{org}/clients/{client}/versions", {"version": version})
        return remember_secret(str(created["api_key"]))

    def contract(self, client: str, api: str, plan: str) -> int:
        """`client` and `api` as `org/id/version`, `plan` as `id` (offered by the API)."""
        org, client_id, client_version = client.split("/")
        api_org, api_id, api_version = api.split("/")
        created = self.ok(
            "POST",
            f"/v1/orgs/{org}/clients/{client_id}/versions/{client_version}/contracts",
            {"api_org": api_org, "api": api_id, "api_version": api_version, "plan": plan},
        )
        return int(created["id"])

    def delete_contract(self, client: str, contract_id: int) -> None:
        org, client_id, client_version = client.split("/")
        self.ok("DELETE", f"/v1/orgs/{org}/clients/{client_id}/versions/{client_version}/contracts/{contract_id}")

    def rotate_key(self, client: str, grace_seconds: int) -> dict[str, Any]:
        org, client_id, client_version = client.split("/")
        rotated = dict(
            self.ok(
                "POST",
                f"/v1/orgs/{org}/clients/{client_id}/versions/{client_version}/keys/rotate",
                {"grace_seconds": grace_seconds},
            )
        )
        remember_secret(str(rotated.get("api_key", "")))
        return rotated

    def _create_owned(self, org: str, kind: str, id_: str) -> None:
        response = self.call("POST", f"/v1/orgs/{org}/{kind}", {"id": id_})
        assert response.status_code in (201, 409), f"{kind} {org}/{id_}: {response.status_code} {response.text}"


# --- gateways ------------------------------------------------------------------------------


def gateway_bootstrap(
    control_plane: ControlPlane,
    upstream_port: int,
    failure_mode: str = "closed",
    unmatched: str = "pass",
    control_plane_url: str | None = None,
    poller: dict[str, Any] | None = None,
    admin: str | None = "127.0.0.1:0",
    extra_args: tuple[str, ...] = (),
    replicas: tuple[ControlPlane, ...] = (),
) -> str:
    """The YAML bootstrap `tollgate envoy-config` prints for a gateway of `control_plane`,
    trusting its snapshot public key (derived from the same environment / data directory).
    `replicas` (other control planes on the same database, with the same secrets) join it in
    the gateway's one control-plane cluster (`--control-plane` once per replica).
    `control_plane_url` points the gateway elsewhere (e.g. a fault-injecting proxy in front of
    the control plane); `poller` overrides fields of the plugins' `control_plane` settings
    (e.g. `poll_timeout_seconds`); `admin` is `--admin` (these tests ask for TCP; None keeps
    the default of `envoy-config`, a unix socket in the directory Envoy starts in);
    `extra_args` go to `envoy-config` as they are (e.g. `--snapshot-public-key`)."""
    out = subprocess.run(
        [
            str(TOLLGATE),
            "--data-dir", str(control_plane.data_dir),
            "envoy-config",
            "--wasm", str(REPO / "target" / "tollgate.wasm"),
            "--listen", "127.0.0.1:0",
            "--upstream", f"127.0.0.1:{upstream_port}",
            "--control-plane", control_plane_url or control_plane.url,
            *[arg for replica in replicas for arg in ("--control-plane", replica.url)],
            *(["--admin", admin] if admin else []),
            "--failure-mode", failure_mode,
            "--unmatched", unmatched,
            *extra_args,
        ],
        capture_output=True,
        text=True,
        env=_clean_env(control_plane.env),
        timeout=60,
    )
    assert out.returncode == 0, f"tollgate envoy-config failed: {out.stderr}"
    if not poller:
        return out.stdout
    bootstrap = yaml.safe_load(out.stdout)
    for plugin in _plugin_configs(bootstrap):
        value = json.loads(plugin["configuration"]["value"])
        value["control_plane"].update(poller)
        plugin["configuration"]["value"] = json.dumps(value)
    return yaml.safe_dump(bootstrap)


def _plugin_configs(node: Any) -> list[dict[str, Any]]:
    """Every wasm plugin `config` (filter and poller service) in a bootstrap."""
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        if "vm_config" in node and "configuration" in node:
            found.append(node)
        for child in node.values():
            found += _plugin_configs(child)
    elif isinstance(node, list):
        for child in node:
            found += _plugin_configs(child)
    return found


@dataclass
class SnapshotMetrics:
    """The poller's and workers' snapshot metrics from `/stats/prometheus`."""

    updates: float
    rejected: float
    replayed: float
    fetch_errors: float
    revision: float
    adoptions: float


def snapshot_metrics(envoy: Envoy) -> SnapshotMetrics:
    text = envoy.prometheus()

    def value(name: str) -> float:
        return sum(v for _, _, v in prometheus_samples(text, name))

    return SnapshotMetrics(
        updates=value("tollgate_snapshot_updates_total"),
        rejected=value("tollgate_snapshot_rejected_total"),
        replayed=value("tollgate_snapshot_replayed_total"),
        fetch_errors=value("tollgate_snapshot_fetch_errors_total"),
        revision=value("tollgate_snapshot_revision"),
        adoptions=value("tollgate_snapshot_adoptions_total"),
    )


_LOG_THREAD = re.compile(r"^\[[^\]]+\]\[(\d+)\]")


def workers_enforcing(envoy: Envoy, revision: int) -> int:
    """How many worker threads logged that they enforce `revision`. The poller's thread (the
    main thread) also holds a filter root that adopts snapshots; it is not a worker."""
    poller_threads: set[str] = set()
    enforcing: set[str] = set()
    for line in envoy.log().splitlines():
        match = _LOG_THREAD.match(line)
        if not match:
            continue
        if "tollgate poller: polling cluster" in line:
            poller_threads.add(match.group(1))
        elif line.endswith(f"tollgate: enforcing snapshot revision {revision}"):
            enforcing.add(match.group(1))
    return len(enforcing - poller_threads)


def wait_all_workers_enforce(envoy: Envoy, revision: int, deadline_s: float = CHANGE_DEADLINE_S) -> None:
    wait_until(
        lambda: workers_enforcing(envoy, revision) >= WORKERS,
        deadline_s,
        f"all {WORKERS} workers to enforce snapshot revision {revision}",
        interval_s=0.01,
    )


# --- what a caller sees --------------------------------------------------------------------


def get(envoy: Envoy, path: str, key: str | None = None, session: requests.Session | None = None) -> requests.Response:
    """GET through the gateway; a fresh connection (so any worker) unless `session` is given."""
    headers = {"x-api-key": key} if key else {}
    return (session or requests).get(f"{envoy.url}{path}", headers=headers, timeout=10)


def worker_sessions(envoy: Envoy, attempts: int = 64) -> list[requests.Session]:
    """One keep-alive session per worker thread: a connection stays on the worker that accepted
    it, and Envoy's per-worker listener stats tell which one that was."""

    def accepted() -> dict[str, int]:
        return {
            name.split(".")[-2]: value
            for name, value in envoy.stats(r"worker_\d+\.downstream_cx_total$").items()
        }

    sessions: dict[str, requests.Session] = {}
    for _ in range(attempts):
        before = accepted()
        session = requests.Session()
        session.get(f"{envoy.url}/", timeout=10)
        grown = [worker for worker, total in accepted().items() if total > before.get(worker, 0)]
        if len(grown) == 1 and grown[0] not in sessions:
            sessions[grown[0]] = session
        else:
            session.close()
        if len(sessions) == WORKERS:
            return [sessions[worker] for worker in sorted(sessions)]
    raise AssertionError(f"no connection to every worker after {attempts} tries: {sorted(sessions)}")


def answered(
    envoy: Envoy,
    path: str,
    key: str | None,
    status: int,
    deadline_s: float,
    session: requests.Session | None = None,
) -> requests.Response:
    """Polls the gateway until `path` answers `status`; returns that response."""
    # A list, because a requests.Response is falsy for 4xx and 5xx statuses.
    found: list[requests.Response] = wait_until(
        lambda: [r] if (r := get(envoy, path, key, session)).status_code == status else None,
        deadline_s,
        f"{path} to answer {status}",
        interval_s=0.01,
    )
    return found[0]


def percentile(samples: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(samples)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


class LiveProcesses:
    """The control planes and gateways one test module starts; `stop_all` ends every one.
    With `postgres`, each control plane gets a fresh database there and the replica secrets in
    its environment (what the test passes in `env` wins)."""

    def __init__(self, upstream_port: int, workdir: Path, postgres: Postgres | None = None) -> None:
        self.upstream_port = upstream_port
        self.workdir = workdir
        self.postgres = postgres
        self.control_planes: list[ControlPlane] = []
        self.gateways: list[Envoy] = []

    def control_plane(
        self,
        port: int = 0,
        env: dict[str, str] | None = None,
        start: bool = True,
        args: tuple[str, ...] = (),
    ) -> ControlPlane:
        if self.postgres is not None:
            env = {**replica_secrets(), **(env or {})}
            args = ("--database", fresh_database(self.postgres), *args)
        control_plane = self._control_plane(port, env, args)
        return control_plane.start() if start else control_plane

    def replicas(self, postgres: Postgres, count: int = 2) -> list[ControlPlane]:
        """`count` running control planes on one fresh database of `postgres`: replicas, each
        with its own data directory and port, all with the same secrets."""
        env = replica_secrets()
        database = fresh_database(postgres, "replicas")
        return [self._control_plane(0, env, ("--database", database)).start() for _ in range(count)]

    def _control_plane(self, port: int, env: dict[str, str] | None, args: tuple[str, ...]) -> ControlPlane:
        n = len(self.control_planes)
        control_plane = ControlPlane(self.workdir / f"control-plane-{n}" / "data", port, env, args)
        control_plane.data_dir.parent.mkdir(parents=True)
        self.control_planes.append(control_plane)
        return control_plane

    def gateway(
        self,
        control_plane: ControlPlane,
        failure_mode: str = "closed",
        unmatched: str = "pass",
        control_plane_url: str | None = None,
        poller: dict[str, Any] | None = None,
        admin: str | None = "127.0.0.1:0",
        extra_args: tuple[str, ...] = (),
        replicas: tuple[ControlPlane, ...] = (),
    ) -> Envoy:
        """A gateway of `control_plane` (and its `replicas`, in one cluster), started as an
        operator would: the bootstrap of `tollgate envoy-config`, the gateway token in Envoy's
        environment, its own directory as the working directory."""
        bootstrap = gateway_bootstrap(
            control_plane,
            self.upstream_port,
            failure_mode,
            unmatched,
            control_plane_url,
            poller,
            admin,
            extra_args,
            replicas,
        )
        workdir = self.workdir / f"gateway-{len(self.gateways)}"
        workdir.mkdir(parents=True, exist_ok=True)
        envoy = Envoy(
            bootstrap,
            workdir,
            listener="tollgate",
            env={"TOLLGATE_GATEWAY_TOKEN": control_plane.secret("TOLLGATE_GATEWAY_TOKEN")},
            cwd=workdir,
        )
        self.gateways.append(envoy)
        envoy.wait_ready()
        return envoy

    def stop_all(self) -> None:
        for envoy in self.gateways:
            envoy.stop()
        for control_plane in self.control_planes:
            control_plane.kill()
