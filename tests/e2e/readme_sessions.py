"""The README's console sessions, run as written against a live demo.

A session is a ```console block right after the line `<!-- runnable session: … -->`. Its `$ `
lines (with their `\\`-continued lines) are commands; the lines up to the next `$ ` are what the
README says the command prints. Every command runs, in order, in one bash process that has
sourced the demo's `env`, as a reader's terminal would.

An answer matches when each printed line the README shows is found, in order, among the lines
the command printed (the README leaves out headers such as `date:`). In the README's lines `…`
stands for any text, and a line that starts with a space after one that ends with `,` continues
it (a long JSON line, wrapped). Values that differ on every run (tokens, API keys, client
credentials, kids, public keys, timestamps, seconds until a window resets) are replaced by
placeholders on both sides before comparing. What every command printed is kept in
`sessions.transcript` beside the demo's state directory: real output for the README.

Between commands the runner waits until every gateway worker enforces the control plane's
latest revision: "reaches every Envoy worker within moments" is a reader's typing speed, which
a script does not have. Before each session it waits for the first 40 s of a minute, so that a
session's requests fall in one window of the per-minute limits.
"""

from __future__ import annotations

import datetime as dt
import os
import queue
import re
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from harness import REPO, WORKERS, wait_until
from live import workers_enforcing

MARKER = "<!-- runnable session:"
COMMAND_DEADLINE_S = 60.0
SYNC_DEADLINE_S = 10.0
# The demo's default addresses as the README writes them.
DEFAULT_PORTS = {"gateway": 10000, "admin": 9901, "control_plane": 7100, "upstream": 18080}


@dataclass
class Step:
    command: str
    expected: list[str]
    line: int  # where the command starts in the README, for messages


@dataclass
class Session:
    source: Path
    line: int
    steps: list[Step]


def sessions(path: Path) -> list[Session]:
    """The runnable sessions of a Markdown file, in order."""
    lines = path.read_text().splitlines()
    found: list[Session] = []
    i = 0
    while i < len(lines):
        if not lines[i].startswith(MARKER):
            i += 1
            continue
        assert lines[i + 1] == "```console", f"{path}:{i + 2}: a runnable session is a ```console block"
        start = i + 2
        end = lines.index("```", start)
        steps: list[Step] = []
        j = start
        while j < end:
            text = lines[j]
            assert text.startswith("$ "), f"{path}:{j + 1}: a session starts with a command"
            command_line = j + 1
            command = [text[2:]]
            while command[-1].endswith("\\"):
                j += 1
                command.append(lines[j])
            j += 1
            expected: list[str] = []
            while j < end and not lines[j].startswith("$ "):
                if lines[j].startswith(" ") and expected and expected[-1].endswith(","):
                    expected[-1] += lines[j]
                else:
                    expected.append(lines[j])
                j += 1
            steps.append(Step("\n".join(command), [e for e in expected if e.strip()], command_line))
        found.append(Session(path, start, steps))
        i = end + 1
    return found


_VOLATILE = [
    (re.compile(r"eyJ[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]*){0,2}"), "<jwt>"),
    (re.compile(r"\btg[cs]?_[A-Za-z0-9_-]+"), "<secret>"),
    (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"), "<time>"),
    (re.compile(r"(?i)(x-ratelimit-reset|retry-after): \d+"), r"\1: <n>"),
    (re.compile(r"retry in \d+ s"), "retry in <n> s"),
    (re.compile(r'"(kid|x)":"[^"]+"'), r'"\1":"<\1>"'),
    (re.compile(r"new signing key \S+"), "new signing key <kid>"),
    (re.compile(r"(?<=│ )[A-Za-z0-9_-]{16}(?= ┆)"), "<kid>"),
]


def normalize(text: str) -> str:
    for pattern, placeholder in _VOLATILE:
        text = pattern.sub(placeholder, text)
    return text


def mismatch(expected: list[str], printed: str) -> str | None:
    """None when every expected line is found in order in `printed`; else the first one missing."""
    actual = [normalize(line.rstrip("\r")) for line in printed.splitlines()]
    at = 0
    for want in expected:
        pattern = re.compile(".*".join(re.escape(part) for part in normalize(want).split("…")))
        while at < len(actual) and not pattern.fullmatch(actual[at]):
            at += 1
        if at == len(actual):
            return want
        at += 1
    return None


class Demo:
    """Addresses of a running demo; `localize` rewrites the README's default ones to them."""

    def __init__(self, demo_dir: Path, ports: dict[str, int]) -> None:
        self.demo_dir = demo_dir
        self.ports = ports

    def localize(self, text: str) -> str:
        for name, default in DEFAULT_PORTS.items():
            text = text.replace(f"127.0.0.1:{default}", f"127.0.0.1:{self.ports[name]}")
        return text.replace(".demo/", f"{self.demo_dir}/")

    def log(self) -> str:  # what live.workers_enforcing reads
        return (self.demo_dir / "envoy.log").read_text(errors="replace")

    def wait_gateway_current(self) -> None:
        url = f"http://127.0.0.1:{self.ports['control_plane']}/healthz"
        revision = int(requests.get(url, timeout=5).json()["revision"])
        wait_until(lambda: workers_enforcing(self, revision) >= WORKERS, SYNC_DEADLINE_S,
                   f"every worker to enforce revision {revision}", interval_s=0.02)


class Shell:
    """One bash process; `run` sends a command and returns what it printed (stdout and stderr)."""

    _END = "\x1etollgate-session-step-done"

    def __init__(self, demo: Demo) -> None:
        # curl writes its progress meter when its output is not a terminal; a reader's is.
        curl_home = demo.demo_dir.parent / "curl-home"
        curl_home.mkdir(exist_ok=True)
        (curl_home / ".curlrc").write_text("no-progress-meter\n")
        # A reader's shell has only what `source .demo/env` sets of tollgate's own variables.
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
        env["CURL_HOME"] = str(curl_home)
        self.proc = subprocess.Popen(
            ["bash", "--noprofile", "--norc"], cwd=REPO, env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.run(f"source {demo.demo_dir}/env")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def run(self, command: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{command}\nprintf '\\n{self._END}\\n'\n")
        self.proc.stdin.flush()
        printed = []
        end = time.monotonic() + COMMAND_DEADLINE_S
        while True:
            line = self.lines.get(timeout=max(0.1, end - time.monotonic()))
            if line.rstrip("\n") == self._END:
                break
            printed.append(line)
        text = "".join(printed)
        return text[:-1] if text.endswith("\n") else text  # the newline before the marker

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=10)


def early_in_a_minute() -> None:
    while dt.datetime.now(dt.timezone.utc).second > 40:
        time.sleep(0.5)


def run_session(session: Session, shell: Shell, demo: Demo) -> list[str]:
    """Runs every command of `session`; returns one message per answer that differs."""
    early_in_a_minute()
    failures = []
    transcript = demo.demo_dir.parent / "sessions.transcript"
    for step in session.steps:
        printed = shell.run(demo.localize(step.command))
        with transcript.open("a") as f:
            f.write(f"$ {step.command}\n{printed}\n")
        missing = mismatch([demo.localize(e) for e in step.expected], printed)
        if missing is not None:
            failures.append(f"{session.source.name}:{step.line}: $ {step.command}\n"
                            f"  expected a line like: {missing}\n  printed:\n{printed}")
        demo.wait_gateway_current()
    return failures
