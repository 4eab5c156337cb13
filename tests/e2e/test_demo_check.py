"""`scripts/demo.sh --check`, the demo's non-interactive mode, passes: the live demo comes up
(control plane, seed through `tollgate apply -f`, echo upstream, Envoy from `tollgate
envoy-config`), answers every walkthrough step as the README says, and stops everything.

Run twice on one data directory, as a user re-running the demo would: the second run applies
the seed again without changes, reuses the stored keys, and issues a fresh key (by rotation)
for the one that went missing. Ports are free ones, so the demo never collides with other
suites or with a demo someone is running.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

from harness import REPO

DEMO = REPO / "scripts" / "demo.sh"
# The first run may compile the control plane; the walkthrough itself takes seconds.
RUN_DEADLINE_S = 1800


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def run_check(demo_dir: Path) -> subprocess.CompletedProcess[str]:
    port, admin, upstream, control_plane = free_ports(4)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
    env.update(
        TOLLGATE_DEMO_DIR=str(demo_dir),
        TOLLGATE_DEMO_PORT=str(port),
        TOLLGATE_DEMO_ADMIN_PORT=str(admin),
        TOLLGATE_DEMO_UPSTREAM_PORT=str(upstream),
        TOLLGATE_DEMO_CONTROL_PLANE_PORT=str(control_plane),
    )
    result = subprocess.run(
        [str(DEMO), "--check"],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_DEADLINE_S,
    )
    for port in (port, admin, upstream, control_plane):
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still served after the demo"
    return result


def explain(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout[-6000:]}\n--- stderr\n{result.stderr[-4000:]}"


def test_demo_check_passes_and_passes_again_on_a_rerun(tmp_path: Path) -> None:
    demo_dir = tmp_path / "demo"

    first = run_check(demo_dir)
    assert first.returncode == 0, explain(first)
    assert "demo check: every answer as documented" in first.stdout, explain(first)
    assert "created client version acme/hobby-script/1" in first.stdout, explain(first)
    assert (demo_dir / "keys").stat().st_mode & 0o077 == 0, "the stored keys are private"

    keys = demo_dir / "keys"
    keys.write_text("".join(line + "\n" for line in keys.read_text().splitlines()
                            if not line.startswith("acme/hobby-script/1 ")))

    second = run_check(demo_dir)
    assert second.returncode == 0, explain(second)
    assert "no changes" in second.stdout, explain(second)
    rotated = [line for line in second.stdout.splitlines() if "rotating it" in line]
    assert rotated == ["demo: no valid stored key for acme/hobby-script/1: rotating it to get a fresh one"], explain(second)
    assert "demo stopped" in second.stdout, explain(second)
