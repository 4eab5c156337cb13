"""A private PostgreSQL cluster for the suite (issue 14: control-plane replicas sharing one
PostgreSQL): the server binaries of Debian's postgresql package (scripts/setup.sh installs it),
`initdb` in a directory of its own, `postgres` on a loopback port chosen once, durability off
(a test's data need not survive a crash of the machine). Every connection is trusted.

The server can be stopped (a fast shutdown), killed (SIGKILL) and started again on the same
port and data, so control planes pointed at it find it again. It dies with the test process
(`setpriv --pdeathsig KILL`), and is stopped by its fixture or, as a last resort, by harness at
interpreter exit.

PostgreSQL refuses to run as root: when the suite runs as root, `initdb` and `postgres` run as
`nobody`, in a directory under the system's temporary directory handed to `nobody` (pytest's
own temporary directories are private to the suite's user). The log stays in `workdir`, where
the session's secrets-in-logs check reads it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from fleet import free_port
from harness import LOGS, START_DEADLINE_S, _live, wait_until

SERVER_DIRS = Path("/usr/lib/postgresql")
USER = "tollgate"  # the cluster's superuser
STOP_DEADLINE_S = 30.0


def server_bin_dir() -> Path:
    """The newest `/usr/lib/postgresql/NN/bin` with the server binaries."""
    found = sorted(
        (int(d.name), d / "bin")
        for d in (SERVER_DIRS.iterdir() if SERVER_DIRS.is_dir() else [])
        if d.name.isdigit() and (d / "bin" / "initdb").exists() and (d / "bin" / "postgres").exists()
    )
    if not found:
        raise RuntimeError(
            f"no PostgreSQL server in {SERVER_DIRS}/*/bin: scripts/setup.sh installs it (Debian's postgresql)"
        )
    return found[-1][1]


def _as_server_user(program: Path, die_with_parent: bool) -> list[str]:
    """`program` run as a user PostgreSQL accepts: `nobody` when the suite runs as root. With
    `die_with_parent`, SIGKILLed when the suite's process ends (setpriv sets the signal after
    changing the user, which would clear it)."""
    words: list[str] = []
    if os.geteuid() == 0:
        words += ["--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    if die_with_parent:
        words += ["--pdeathsig", "KILL"]
    return ["setpriv", *words, str(program)] if words else [str(program)]


class PostgresFailedToStart(RuntimeError):
    pass


class Postgres:
    """One PostgreSQL cluster: `start()` creates it on first use, `create_database(name)` gives a
    fresh database's URL, `stop()`, `kill()` and `restart()` act on the server and keep its
    port and data, `destroy()` stops it and deletes the cluster."""

    def __init__(self, workdir: Path) -> None:
        self.bin = server_bin_dir()
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.cluster = Path(tempfile.mkdtemp(prefix="tollgate-e2e-postgres-"))
        self.port = free_port()
        self.log_path = workdir / "postgres.log"
        LOGS.add(self.log_path)
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def data(self) -> Path:
        return self.cluster / "data"

    def url(self, db: str = "postgres") -> str:
        return f"postgres://{USER}@127.0.0.1:{self.port}/{db}"

    def start(self) -> "Postgres":
        assert not self.running(), "already running"
        if not self.data.exists():
            self._initdb()
        if self.starts == 0:
            # A port the kernel just handed out; another process taking it meanwhile makes
            # postgres exit, and the next port is tried.
            for _ in range(4):
                if self._spawned():
                    return self
                self.port = free_port()
            self._spawn()
            return self
        # A restart keeps the port. After a kill, the old server's sessions may hold its shared
        # memory for a moment, and postgres refuses to start until they are gone.
        try:
            wait_until(self._spawned, START_DEADLINE_S, f"postgres to start again on port {self.port}", 0.1)
        except TimeoutError as error:
            raise PostgresFailedToStart(f"{error}:\n{self.log()[-2000:]}") from None
        return self

    def _initdb(self) -> None:
        if os.geteuid() == 0:
            subprocess.run(["chown", "-R", "nobody:nogroup", str(self.cluster)], check=True)
        done = subprocess.run(
            [
                *_as_server_user(self.bin / "initdb", die_with_parent=False),
                "-D", str(self.data),
                "-U", USER,
                "-A", "trust",
                "--no-sync",
                "-E", "UTF8",
                # The environment's locale may not exist here; C sorts bytes, as SQLite does.
                "--locale=C",
            ],  # fmt: skip
            cwd=self.cluster,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=START_DEADLINE_S,
        )
        if done.returncode != 0:
            raise PostgresFailedToStart(f"initdb exited with status {done.returncode}:\n{done.stdout}{done.stderr}")

    def _spawned(self) -> bool:
        try:
            self._spawn()
        except PostgresFailedToStart:
            return False
        return True

    def _spawn(self) -> None:
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    *_as_server_user(self.bin / "postgres", die_with_parent=True),
                    "-D", str(self.data),
                    "-p", str(self.port),
                    "-c", "listen_addresses=127.0.0.1",
                    "-k", str(self.cluster),
                    # Nothing waits for the disk. Commits still wait for their write to the
                    # kernel (synchronous_commit stays on), so a killed server keeps every
                    # commit it acknowledged, as a real one does.
                    "-c", "fsync=off",
                    "-c", "full_page_writes=off",
                    "-c", "max_connections=200",
                ],  # fmt: skip
                cwd=self.cluster,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        _live.append(self.process)

        def answers() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise PostgresFailedToStart(
                    f"postgres exited with status {self.process.returncode}:\n{self.log()[offset:][-2000:]}"
                )
            return self.ready()

        try:
            wait_until(answers, START_DEADLINE_S, f"postgres to accept connections on port {self.port}")
        except BaseException:
            self.kill()
            raise
        self.starts += 1

    def psql(self, sql: str, db: str = "postgres", timeout_s: float = 10.0) -> str:
        """`sql` through psql (beside the server binaries), stopping at the first error; its
        output, unaligned, one row a line."""
        return subprocess.run(
            [str(self.bin / "psql"), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", self.url(db), "-c", sql],
            check=True,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env={**os.environ, "PGCONNECT_TIMEOUT": "2"},
        ).stdout.strip()

    def ready(self) -> bool:
        try:
            return self.psql("SELECT 1", timeout_s=5.0) == "1"
        except (OSError, subprocess.SubprocessError):
            return False

    def create_database(self, name: str) -> str:
        """A new, empty database `name` (lowercase letters, digits, `_`); its URL."""
        if not re.fullmatch(r"[a-z0-9_]+", name):
            raise ValueError(f"database name {name!r}: lowercase letters, digits and _ only")
        self.psql(f"CREATE DATABASE {name}")
        return self.url(name)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """A fast shutdown (SIGINT: sessions are ended, the data is checkpointed)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=STOP_DEADLINE_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_DEADLINE_S)
        if self.process in _live:
            _live.remove(self.process)
        self.process = None

    def kill(self) -> None:
        """SIGKILL: nothing is checkpointed; a restart recovers from the write-ahead log."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=STOP_DEADLINE_S)
        self.stop()

    def restart(self) -> "Postgres":
        self.stop()
        return self.start()

    def destroy(self) -> None:
        """Stops the server and deletes the cluster."""
        self.stop()
        shutil.rmtree(self.cluster, ignore_errors=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
