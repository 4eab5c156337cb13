"""Fleet mode as operators run it (issue 13): a real `redis-server` on a loopback port, the
control plane started with `--redis` and `--fleet-fallback`, and several Envoys (2 workers
each) from the bootstrap `tollgate envoy-config` prints, all long-polling that control plane and
asking its broker for grants. The gateways' configuration is the one of live mode: they learn
from the snapshot that counts are fleet-wide.

Redis, the control plane and any one Envoy can be killed (SIGKILL) and Redis and the control
plane restarted on the same port, so the gateways find them again. Redis keeps nothing on disk
(`--save "" --appendonly no`): a restarted Redis starts empty, as a failover to a replica that
had not yet received the last increments would.

Traffic comes from threads, each on its own keep-alive connection to one gateway (the kernel
spreads connections over the gateway's workers); every answer is kept with the times it was
sent and received, so a test can tell which UTC window admitted it.
"""

from __future__ import annotations

import http.client
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from harness import LOGS, START_DEADLINE_S, Envoy, _live, _stop, wait_until
from live import CHANGE_DEADLINE_S, RECONNECT_DEADLINE_S, ControlPlane, LiveProcesses, wait_all_workers_enforce

GATEWAYS = 3  # the fleet: 3 Envoys × 2 workers
ORG = "fleet"
API = "orders"
PATH = "/orders/v1/items"
WARM_PLAN = "warm"
PROBE_PLAN = "probe"  # one request a day: see counts_fleet_wide
# The gateways' poller retries quickly, so a restarted control plane is found again within a
# second or two rather than after the default 10 s backoff.
POLLER = {"retry_initial_ms": 100, "retry_max_ms": 1000}

# A plan's limits, as (requests, period) pairs.
Limits = tuple[tuple[int, str], ...]


def redis_server() -> str:
    path = shutil.which("redis-server")
    if path is None:
        raise RuntimeError("redis-server is missing: scripts/setup.sh installs it (Debian's redis-server)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- Redis -----------------------------------------------------------------------------------


class RedisFailedToStart(RuntimeError):
    pass


class Redis:
    """`redis-server` on a loopback port of its own, in `workdir`, persisting nothing. The port
    is chosen once; a restart listens on it again (empty)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log_path = workdir / "redis.log"
        LOGS.add(self.log_path)
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> "Redis":
        assert not self.running(), "already running"
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    redis_server(),
                    "--port", str(self.port),
                    "--bind", "127.0.0.1",
                    "--dir", str(self.workdir),
                    "--save", "",
                    "--appendonly", "no",
                ],  # fmt: skip
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        _live.append(self.process)
        self.starts += 1

        def answers() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RedisFailedToStart(f"redis-server exited with status {self.process.returncode}:\n{self.log()[-2000:]}")
            return self.ping()

        try:
            wait_until(answers, START_DEADLINE_S, f"redis-server to answer PING on port {self.port}")
        except BaseException:
            self.stop()
            raise
        return self

    def cli(self, *words: str, timeout_s: float = 5.0) -> str:
        """One command through redis-cli (Debian's redis-tools, beside redis-server); its reply."""
        return subprocess.run(
            ["redis-cli", "-p", str(self.port), *words],
            check=True, capture_output=True, text=True, timeout=timeout_s,
        ).stdout.strip()

    def scan(self, pattern: str) -> list[str]:
        """The keys matching `pattern` (redis-cli's SCAN)."""
        return [line for line in self.cli("--scan", "--pattern", pattern).splitlines() if line]

    def ping(self) -> bool:
        try:
            return self.cli("PING", timeout_s=2.0) == "PONG"
        except (OSError, subprocess.SubprocessError):
            return False

    def keys(self) -> int:
        """How many keys Redis holds (DBSIZE)."""
        return int(self.cli("DBSIZE"))

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: every count in it is gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        self.stop()

    def restart(self) -> "Redis":
        self.kill()
        return self.start()

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


# --- the fleet -------------------------------------------------------------------------------


class Fleet:
    """One Redis, one control plane with `--redis` and `--fleet-fallback fallback`, and
    `gateways` Envoys of it. Its catalogue: org `fleet`, the plans `plans` names (plan id →
    limits, version 1, locked) plus `warm` (no practical limit) and `probe` (one request a
    day, for `counts_fleet_wide`), all offered by one private API on /orders/v1.
    `contract(plan)` issues a fresh client version with a contract through a
    plan, so every test counts on counters no other test touched."""

    def __init__(self, workdir: Path, upstream_port: int, fallback: str, plans: dict[str, Limits], gateways: int = GATEWAYS) -> None:
        self.fallback = fallback
        self.plans = dict(plans)
        self.size = gateways
        self.live = LiveProcesses(upstream_port, workdir)
        self.redis = Redis(workdir / "redis")
        self.control_plane: ControlPlane | None = None
        self.gateways: list[Envoy] = []
        # Gateways killed by a test: the broker still counts them among the gateways it saw in
        # the last minute, so the fleet is not reused after that.
        self.killed: list[int] = []
        self._clients = 0
        self.warm_key = ""

    def serve_args(self) -> tuple[str, ...]:
        return ("--redis", self.redis.url, "--fleet-fallback", self.fallback)

    def start(self) -> "Fleet":
        self.redis.start()
        cp = self.control_plane = self.live.control_plane(args=self.serve_args())
        cp.org(ORG)
        cp.locked_plan(ORG, WARM_PLAN, "1", (1_000_000_000, "day"))
        cp.locked_plan(ORG, PROBE_PLAN, "1", (1, "day"))
        for plan, limits in self.plans.items():
            cp.locked_plan(ORG, plan, "1", *limits)
        offered = tuple((plan, "1") for plan in [WARM_PLAN, PROBE_PLAN, *self.plans])
        cp.api_version(ORG, API, "1", "/orders/v1", plans=offered)
        self.warm_key = self.contract(WARM_PLAN, wait=False)
        self.gateways = [self.live.gateway(cp, poller=POLLER) for _ in range(self.size)]
        self.wait_enforced(cp.revision(), START_DEADLINE_S)
        self.warm()
        return self

    @property
    def cp(self) -> ControlPlane:
        assert self.control_plane is not None, "the fleet has not started"
        return self.control_plane

    def alive(self) -> list[Envoy]:
        return [g for i, g in enumerate(self.gateways) if i not in self.killed]

    def wait_enforced(self, revision: int, deadline_s: float = CHANGE_DEADLINE_S) -> None:
        for gateway in self.alive():
            wait_all_workers_enforce(gateway, revision, deadline_s)

    def contract(self, plan: str, wait: bool = True) -> str:
        """A new client version with a contract through `plan`; its API key, once every live
        gateway's workers enforce it."""
        self._clients += 1
        client = f"c{self._clients}"
        key = self.cp.client_version(ORG, client, "1")
        self.cp.contract(f"{ORG}/{client}/1", f"{ORG}/{API}/1", plan)
        if wait:
            self.wait_enforced(self.cp.revision(), RECONNECT_DEADLINE_S)
        return key

    def warm(self) -> None:
        """One admitted request through every live gateway (on a fresh connection each time,
        so both workers take part): each has asked the broker for a grant within the minute,
        so the broker's count of gateways — the N of `share` — is the fleet's size."""
        for gateway in self.alive():
            for _ in range(4):
                status = call(gateway, self.warm_key)
                assert status == 200, f"the warm-up contract answered {status} through gateway {gateway.port}"

    # --- faults ---

    def kill_redis(self) -> None:
        self.redis.kill()

    def restart_redis(self) -> None:
        """Redis again on its port, empty."""
        self.redis.start()

    def kill_control_plane(self) -> None:
        self.cp.kill()

    def restart_control_plane(self) -> None:
        self.cp.start()

    def kill_gateway(self, index: int) -> Envoy:
        """SIGKILL one Envoy, with whatever grants it held."""
        gateway = self.gateways[index]
        gateway.kill()
        self.killed.append(index)
        return gateway

    def stop(self) -> None:
        self.live.stop_all()
        self.redis.kill()


class FleetPool:
    """The fleets of one test module, one at a time: `get(fallback, plans)` returns the
    running fleet when it has that fallback and is whole, else stops it and starts another."""

    def __init__(self, workdir: Path, upstream_port: int) -> None:
        self.workdir = workdir
        self.upstream_port = upstream_port
        self.current: Fleet | None = None
        self._started = 0

    def get(self, fallback: str, plans: dict[str, Limits]) -> Fleet:
        fleet = self.current
        if fleet is not None and fleet.fallback == fallback and fleet.plans == plans and not fleet.killed:
            return fleet
        self.stop()
        self._started += 1
        self.current = Fleet(self.workdir / f"fleet-{self._started}-{fallback}", self.upstream_port, fallback, plans)
        try:
            self.current.start()
        except BaseException:
            self.stop()
            raise
        return self.current

    def stop(self) -> None:
        if self.current is not None:
            self.current.stop()
            self.current = None


# --- traffic ---------------------------------------------------------------------------------


def call(gateway: Envoy, key: str, timeout_s: float = 30) -> int:
    """One GET on a fresh connection (so any worker of the gateway); its status."""
    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=timeout_s)
    try:
        connection.request("GET", PATH, headers={"x-api-key": key})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


@dataclass
class Answer:
    gateway: int  # index in the fleet
    status: int | str  # a status code, or the transport error's description
    sent: float  # time.time() just before the request was written
    received: float  # time.time() once the whole answer was read
    retry_after: str | None


@dataclass
class Traffic:
    """Every answer of a run of `hammer`, with the questions tests ask of them."""

    answers: list[Answer] = field(default_factory=list)

    def __iadd__(self, other: "Traffic") -> "Traffic":
        self.answers += other.answers
        return self

    def statuses(self) -> Counter[int | str]:
        return Counter(a.status for a in self.answers)

    def admitted(self, gateway: int | None = None) -> int:
        return sum(1 for a in self.answers if a.status == 200 and (gateway is None or a.gateway == gateway))

    def admitted_by_gateway(self) -> dict[int, int]:
        return {g: self.admitted(g) for g in sorted({a.gateway for a in self.answers})}

    def unexpected(self, allowed: frozenset[int] = frozenset({200, 429})) -> list[Answer]:
        """Answers that are neither an admission nor a refusal by a limit: 5xx, errors."""
        return [a for a in self.answers if a.status not in allowed]

    def refusals_without_retry_after(self) -> list[Answer]:
        return [a for a in self.answers if a.status == 429 and not (a.retry_after or "").isdigit()]

    def span(self) -> tuple[float, float]:
        return min(a.sent for a in self.answers), max(a.received for a in self.answers)


def hammer(
    gateways: list[tuple[int, Envoy]],
    key: str,
    *,
    connections: int = 4,
    requests: int | None = None,
    start_at: float | None = None,
    stop_at: float | None = None,
    deadline_s: float = 120,
) -> Traffic:
    """`connections` threads per gateway ((index, Envoy) pairs), each on its own keep-alive
    connection, all connected first and released together (at `start_at`, a time.time(), when
    given). Each sends `requests` requests, or sends until `stop_at`; the run is bounded by
    `deadline_s` either way. A connection the gateway closes is reopened and the error kept as
    an answer."""
    assert requests is not None or stop_at is not None, "bounded by a count or a time"
    threads: list[threading.Thread] = []
    traffic = Traffic()
    lock = threading.Lock()
    release = threading.Barrier(len(gateways) * connections + 1)
    end = time.monotonic() + deadline_s

    def run(index: int, gateway: Envoy) -> None:
        seen: list[Answer] = []
        connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)
        try:
            connection.connect()
            release.wait(timeout=60)
            n = 0
            while (requests is None or n < requests) and time.monotonic() < end:
                sent = time.time()
                if stop_at is not None and sent >= stop_at:
                    break
                n += 1
                try:
                    connection.request("GET", PATH, headers={"x-api-key": key})
                    response = connection.getresponse()
                    response.read()
                    seen.append(Answer(index, response.status, sent, time.time(), response.getheader("retry-after")))
                except (OSError, http.client.HTTPException) as error:
                    seen.append(Answer(index, f"{type(error).__name__}: {error}", sent, time.time(), None))
                    connection.close()
                    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)
        finally:
            connection.close()
            with lock:
                traffic.answers += seen

    for index, gateway in gateways:
        for _ in range(connections):
            threads.append(threading.Thread(target=run, args=(index, gateway), daemon=True))
    for thread in threads:
        thread.start()
    if start_at is not None:
        wait_until(lambda: time.time() >= start_at, 5, "the burst's start", interval_s=0.001)
    release.wait(timeout=60)
    for thread in threads:
        thread.join(timeout=deadline_s + 60)
    assert not any(thread.is_alive() for thread in threads), "a client thread hung"
    return traffic


def trickle_until(
    gateways: list[tuple[int, Envoy]],
    key: str,
    admitted: int,
    target: int,
    deadline_s: float = 30,
    interval_s: float = 0.02,
) -> tuple[int, Traffic]:
    """Single requests on fresh connections, round robin over `gateways`, until `target` are
    admitted in all (counting the `admitted` already) or the deadline passes: units a worker or
    a gateway still held when a burst ended come back on its tick and are spent here. Stops as
    soon as `target` is reached or passed; the caller asserts on the total it returns, with
    these answers."""
    traffic = Traffic()
    turn = [0]

    def one() -> bool:
        nonlocal admitted
        if admitted >= target:
            return True
        index, gateway = gateways[turn[0] % len(gateways)]
        turn[0] += 1
        sent = time.time()
        status = call(gateway, key)
        traffic.answers.append(Answer(index, status, sent, time.time(), None))
        if status == 200:
            admitted += 1
        return admitted >= target

    try:
        wait_until(one, deadline_s, f"{target} admitted in all", interval_s=interval_s)
    except TimeoutError:
        pass
    return admitted, traffic


def window_of(per: str, t: float) -> int:
    """The UTC window (second, minute or hour) `t` falls in, as its index since the epoch."""
    return int(t // {"second": 1, "minute": 60, "hour": 3600}[per])


def refused_everywhere(fleet: Fleet, key: str, tries: int = 4) -> dict[int, list[int]]:
    """Statuses of `tries` fresh connections per live gateway (both workers answer)."""
    return {i: [call(g, key) for _ in range(tries)] for i, g in enumerate(fleet.gateways) if i not in fleet.killed}


def counts_fleet_wide(fleet: Fleet) -> bool:
    """Whether every live gateway counts through the broker again: for each, a fresh contract
    of one request a day admits through it and then refuses through every other gateway. No
    fallback passes this on its own: `share` and `closed` admit none of such a contract
    (⌊1 / N⌋ = 0), `local` admits one through every gateway."""
    alive = [(i, g) for i, g in enumerate(fleet.gateways) if i not in fleet.killed]
    for i, gateway in alive:
        key = fleet.contract(PROBE_PLAN)
        if call(gateway, key) != 200:
            return False
        if any(call(other, key) != 429 for j, other in alive if j != i):
            return False
    return True
