"""wrk runs on loopback with a Lua script that reports its summary as JSON."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "wrk"
SUMMARY = SCRIPTS / "summary.lua"
STATUSES = SCRIPTS / "statuses.lua"
LEASE = SCRIPTS / "lease.lua"  # POSTs $TOLLGATE_BENCH_LEASE; counts by status


@dataclass
class WrkResult:
    requests: int
    duration_s: float
    non_2xx_3xx: int
    socket_errors: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    statuses: dict[int | str, int] = field(default_factory=dict)

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0


def run_wrk(
    url: str,
    *,
    duration_s: float,
    connections: int,
    threads: int,
    headers: dict[str, str] | None = None,
    script: Path = SUMMARY,
    cpus: str | None = None,
    env: dict[str, str] | None = None,
) -> WrkResult:
    if not url.startswith("http://127."):
        raise ValueError(f"the bench loads loopback addresses only, not {url}")
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        "--latency",
        "--timeout", "5s",
        "-s", str(script),
    ]
    for name, value in (headers or {}).items():
        argv += ["-H", f"{name}: {value}"]
    argv.append(url)
    if cpus is not None:
        argv = ["taskset", "-c", cpus, *argv]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 60, check=False, env=env)
    line = next((l for l in out.stdout.splitlines() if l.startswith("BENCH ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {' '.join(argv)}\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    data = json.loads(line[len("BENCH ") :])
    statuses: dict[int | str, int] = {}
    if "status_200" in data:
        statuses = {200: data["status_200"], 429: data["status_429"], "other": data["status_other"]}
    return WrkResult(
        requests=data["requests"],
        duration_s=data["duration_us"] / 1e6,
        non_2xx_3xx=data["non_2xx_3xx"],
        socket_errors=data["connect_errors"] + data["read_errors"] + data["write_errors"] + data["timeouts"],
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        statuses=statuses,
    )
