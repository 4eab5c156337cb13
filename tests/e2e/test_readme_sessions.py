"""Every runnable console session of README.md (see readme_sessions.py) runs as written against
one live demo started by `scripts/demo.sh` on free ports and a fresh state directory, in the
README's order, each command answering what the README shows."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import REPO, wait_until
from readme_sessions import Demo, Shell, run_session, sessions
from test_demo_check import explain, free_ports

README_SESSIONS = sessions(REPO / "README.md")
# The first run may compile the control plane.
START_DEADLINE_S = 1800


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    demo_dir = tmp_path_factory.mktemp("readme") / "demo"
    names = ["gateway", "admin", "upstream", "control_plane"]
    ports = dict(zip(names, free_ports(len(names))))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
    env.update(
        TOLLGATE_DEMO_DIR=str(demo_dir),
        TOLLGATE_DEMO_PORT=str(ports["gateway"]),
        TOLLGATE_DEMO_ADMIN_PORT=str(ports["admin"]),
        TOLLGATE_DEMO_UPSTREAM_PORT=str(ports["upstream"]),
        TOLLGATE_DEMO_CONTROL_PLANE_PORT=str(ports["control_plane"]),
    )
    demo_dir.parent.mkdir(parents=True, exist_ok=True)
    out = demo_dir.parent / "demo.out"
    with out.open("w") as log:
        proc = subprocess.Popen([str(REPO / "scripts" / "demo.sh")], cwd=REPO, env=env,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: "tollgate demo is up" in out.read_text() or proc.poll() is not None,
                   START_DEADLINE_S, "the demo to be up", interval_s=0.2)
        assert proc.poll() is None, out.read_text()[-4000:]
        yield Demo(demo_dir, ports)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, explain(subprocess.CompletedProcess(proc.args, proc.returncode, out.read_text(), ""))


@pytest.fixture(scope="module")
def shell(demo: Demo) -> Iterator[Shell]:
    shell = Shell(demo)
    yield shell
    shell.close()


def test_the_readme_has_runnable_sessions() -> None:
    assert any("oauth/token" in step.command for s in README_SESSIONS for step in s.steps), \
        "the Tokens session is marked runnable"


@pytest.mark.parametrize("session", README_SESSIONS, ids=lambda s: f"{s.source.name}:{s.line}")
def test_readme_session_runs_as_written(session, demo: Demo, shell: Shell) -> None:
    failures = run_session(session, shell, demo)
    assert not failures, "\n\n".join(failures)
