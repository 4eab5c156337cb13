"""A private PostgreSQL cluster for the replicas section (issue 14): Debian's PostgreSQL 15
server binaries (scripts/setup.sh installs them), `initdb` in a directory of its own, `postgres`
on a loopback port, every connection trusted. Unlike the test suites' clusters, durability stays
as PostgreSQL ships it (fsync, synchronous_commit and full_page_writes on): an acknowledged
write is on disk, as with the SQLite backend's `synchronous=FULL`, so the two are compared on
the same terms.

PostgreSQL refuses to run as root: then `initdb` and `postgres` run as `nobody`, in a directory
handed to `nobody` (the bench's own scratch directory is private to its user). The server is
started through the bench's supervisor and dies with the bench (`setpriv --pdeathsig KILL`).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from .context import Bench
from .processes import wait_until

SERVER_DIRS = Path("/usr/lib/postgresql")
USER = "tollgate"  # the cluster's superuser
START_DEADLINE_S = 60.0


def server_bin_dir() -> Path:
    """The newest `/usr/lib/postgresql/NN/bin` holding `initdb` and `postgres`."""
    found = sorted(
        (int(d.name), d / "bin")
        for d in (SERVER_DIRS.iterdir() if SERVER_DIRS.is_dir() else [])
        if d.name.isdigit() and (d / "bin" / "initdb").exists() and (d / "bin" / "postgres").exists()
    )
    if not found:
        raise RuntimeError(f"no PostgreSQL server in {SERVER_DIRS}/*/bin: scripts/setup.sh installs it")
    return found[-1][1]


def as_server_user(program: Path, die_with_parent: bool) -> list[str]:
    words = ["--reuid=nobody", "--regid=nogroup", "--clear-groups"] if os.geteuid() == 0 else []
    if die_with_parent:
        words += ["--pdeathsig", "KILL"]  # set after the user changes, which would clear it
    return ["setpriv", *words, str(program)] if words else [str(program)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """`start()` runs initdb and the server; `create_database(name)` gives an empty database's
    URL; `psql(sql)` and `copy(...)` talk to it through the server's own psql; `stop()` is a
    fast shutdown and deletes the cluster's directory."""

    def __init__(self, bench: Bench, name: str = "postgres") -> None:
        self.bench = bench
        self.bin = server_bin_dir()
        self.dir = Path(tempfile.mkdtemp(prefix="tollgate-bench-postgres-"))
        self.log_path = bench.workdir / f"{name}.log"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, db: str = "postgres") -> str:
        return f"postgres://{USER}@127.0.0.1:{self.port}/{db}"

    def version(self) -> str:
        return self.psql("SHOW server_version")

    def start(self) -> "Cluster":
        if os.geteuid() == 0:
            subprocess.run(["chown", "-R", "nobody:nogroup", str(self.dir)], check=True)
        done = subprocess.run(
            [*as_server_user(self.bin / "initdb", False), "-D", str(self.dir / "data"), "-U", USER, "-A", "trust", "-E", "UTF8", "--locale=C"],
            cwd=self.dir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=START_DEADLINE_S,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"initdb exited with {done.returncode}:\n{done.stdout}{done.stderr}")
        # A port the kernel just handed out; if another process takes it first, postgres exits
        # and the next one is tried.
        for _ in range(4):
            self.port = free_port()
            argv = [
                *as_server_user(self.bin / "postgres", True),
                "-D", str(self.dir / "data"),
                "-p", str(self.port),
                "-c", "listen_addresses=127.0.0.1",
                "-k", str(self.dir),
                "-c", "max_connections=200",
                # pg_stat_wal's wal_sync_time: what the WAL's fsyncs cost per write.
                "-c", "track_wal_io_timing=on",
            ]  # fmt: skip
            self.process = self.bench.supervisor.start(argv, self.log_path, append=True)

            def ready() -> bool:
                assert self.process is not None
                if self.process.poll() is not None:
                    return True
                try:
                    return self.psql("SELECT 1", timeout_s=5) == "1"
                except (OSError, subprocess.SubprocessError):
                    return False

            wait_until(ready, START_DEADLINE_S, f"postgres to accept connections on port {self.port}", interval_s=0.1)
            if self.process.poll() is None:
                return self
        raise RuntimeError(f"postgres did not start:\n{self.log_path.read_text(errors='replace')[-2000:]}")

    def psql_argv(self, db: str) -> list[str]:
        return [str(self.bin / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", self.url(db)]

    def psql(self, sql: str, db: str = "postgres", timeout_s: float = 60.0) -> str:
        """`sql` through psql, stopping at the first error; its output, one row a line."""
        return subprocess.run(
            [*self.psql_argv(db), "-c", sql],
            check=True,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env={**os.environ, "PGCONNECT_TIMEOUT": "5"},
        ).stdout.strip()

    def script(self, lines: Iterable[str], db: str, timeout_s: float) -> None:
        """A psql script fed on stdin as it is generated (COPY … FROM STDIN data included),
        stopping at the first error."""
        process = subprocess.Popen(
            [*self.psql_argv(db), "-f", "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PGCONNECT_TIMEOUT": "5"},
        )
        assert process.stdin is not None and process.stderr is not None
        try:
            for chunk in batched(lines, 10_000):
                process.stdin.write("".join(chunk))
            process.stdin.close()
            error = process.stderr.read()
            process.wait(timeout=timeout_s)
        except BaseException:
            process.kill()
            process.wait()
            raise
        if process.returncode != 0:
            raise RuntimeError(f"psql exited with {process.returncode}: {error.strip()}")

    def wal(self) -> dict[str, float]:
        """pg_stat_wal's counters: WAL records and bytes, writes and fsyncs (`wal_sync`) and
        their milliseconds, since the server started."""
        names = ("wal_records", "wal_bytes", "wal_write", "wal_sync", "wal_write_time", "wal_sync_time")
        values = self.psql(f"SELECT {', '.join(names)} FROM pg_stat_wal").split("|")
        return {k: float(v) for k, v in zip(names, values)}

    def log_statements(self, on: bool) -> None:
        """Turns the server's logging of every statement on or off (ALTER SYSTEM, reloaded)."""
        self.psql("ALTER SYSTEM SET log_statement = 'all'" if on else "ALTER SYSTEM RESET log_statement")
        self.psql("SELECT pg_reload_conf()")

    def create_database(self, name: str) -> str:
        self.psql(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        """A fast shutdown (SIGINT: sessions ended, data checkpointed), then the directory goes."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        if self.process is not None:
            self.bench.supervisor.stop(self.process)
            self.process = None
        shutil.rmtree(self.dir, ignore_errors=True)


def batched(lines: Iterable[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for line in lines:
        chunk.append(line)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
