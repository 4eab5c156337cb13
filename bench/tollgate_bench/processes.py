"""Every process the bench starts goes through one `Supervisor`, which stops them all on exit,
on failure and on Ctrl-C/SIGTERM, and only them (by their own pid)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Sequence


def wait_until(condition: Callable[[], Any], deadline_s: float, what: str, interval_s: float = 0.05) -> Any:
    """Polls `condition` until it returns something truthy; raises TimeoutError naming `what`."""
    end = time.monotonic() + deadline_s
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > end:
            raise TimeoutError(f"timed out after {deadline_s:.0f}s waiting for {what}")
        time.sleep(interval_s)


def raise_on_termination_signals() -> None:
    """SIGTERM and SIGHUP unwind like Ctrl-C does, so `finally` blocks stop our processes."""

    def unwind(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, unwind)


class Supervisor:
    def __init__(self) -> None:
        self._live: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        argv: Sequence[str],
        log_path: Path,
        cpus: str | None = None,
        env: dict[str, str] | None = None,
        append: bool = False,
    ) -> subprocess.Popen[bytes]:
        """Starts `argv` with output to `log_path` (appended to, for a restart), pinned to
        `cpus` (a taskset list) if given. taskset execs the program, so the pid is the
        program's own."""
        if cpus is not None:
            argv = ["taskset", "-c", cpus, *argv]
        with open(log_path, "ab" if append else "wb") as log:
            process = subprocess.Popen(
                list(argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                # Its own session: a Ctrl-C in the terminal reaches only us, and we stop it.
                start_new_session=True,
            )
        self._live.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=grace_s)
        if process in self._live:
            self._live.remove(process)

    def stop_all(self) -> None:
        for process in list(reversed(self._live)):
            self.stop(process, grace_s=5.0)


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process (all its threads), in clock ticks, from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name may contain spaces and parentheses: fields start after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
