"""Faults survived, with figures (printed under "measured" and recorded in SECURITY.md):

- the control plane SIGKILLed under a concurrent write load: every acknowledged write is there
  after the restart and SQLite's integrity check passes on the file the kill left behind (on
  PostgreSQL: every one is among the rows the server committed);
- a control plane that is slow, erroring, cut off or answering garbage (a fault-injecting proxy
  in front of the real one): the gateway keeps enforcing its last good snapshot, no request
  fails, and the fetch-error and rejected metrics count what happened;
- Envoy restarted while traffic runs: counters start again from zero (documented), no panic or
  trap in either log, and both workers of the new Envoy decide.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Callable

import pytest
import requests

from fault_proxy import FaultProxy
from harness import (
    Catalogue,
    Envoy,
    api,
    clear_of_window_end,
    client,
    envoy_bootstrap,
    limit,
    plan,
    plugin_config,
    prometheus_samples,
    wait_until,
)
from live import ControlPlane, LiveProcesses, snapshot_metrics, wait_all_workers_enforce, worker_sessions

Figure = Callable[[str, str], None]

# Signs that a VM died or is stuck: Rust panics, V8 traps, failed proxy-wasm callbacks.
TRAP_MARKERS = ("panicked", "wasm trap", "Function: proxy_on_", "Uncaught", "wasm vm failed", "VM has failed")


def assert_no_trap(log: str) -> None:
    hits = [line for line in log.splitlines() if any(marker in line for marker in TRAP_MARKERS)]
    assert not hits, "\n".join(hits[:10])


# --- kill -9 of the control plane under a write load ----------------------------------------

WRITERS = 8
ACKED_BEFORE_KILL = 1000


STORED_WRITES = (
    "SELECT id FROM orgs WHERE id LIKE 'w%'",
    "SELECT version FROM client_versions WHERE org = 'kill'",
)


def stored_after_kill(live: LiveProcesses, cp: ControlPlane) -> tuple[str | None, set[str]]:
    """What storage holds as the kill left it, read beside the control plane: SQLite's
    integrity check and the writers' rows in the file (the WAL not yet checkpointed by any
    clean shutdown); on PostgreSQL no integrity check (None: the server's files are its own)
    and the rows the server committed."""
    if cp.database is not None:
        assert live.postgres is not None
        database = cp.database.rsplit("/", 1)[1]
        return None, {row for sql in STORED_WRITES for row in live.postgres.psql(sql, db=database).split()}
    connection = sqlite3.connect(cp.data_dir / "tollgate.db")
    try:
        integrity = connection.execute("PRAGMA integrity_check").fetchall()
        stored = {row[0] for sql in STORED_WRITES for row in connection.execute(sql)}
    finally:
        connection.close()
    return integrity[0][0] if integrity == [("ok",)] else repr(integrity), stored


def test_acknowledged_writes_survive_kill_9_under_load(live: LiveProcesses, report_figure: Figure) -> None:
    cp = live.control_plane()
    acked: list[str] = []
    refused: Counter[int] = Counter()
    unanswered = [0]  # requests cut by the kill: their outcome is unknown to the client
    lock = threading.Lock()
    stop = threading.Event()
    token = cp.secret("TOLLGATE_ADMIN_TOKEN")

    # Half the writers create orgs; the other half client versions, each with a key: a write
    # that re-renders a key-directory bucket of the stored snapshot.
    cp.org("kill")
    for n in range(1, WRITERS, 2):
        cp.ok("POST", "/v1/orgs/kill/clients", {"id": f"k{n}"})

    def writer(n: int) -> None:
        session = requests.Session()
        for i in range(100_000):  # bounded; ends at the kill
            if stop.is_set():
                return
            org = f"w{n}-{i}"
            if n % 2:
                path, body = f"/v1/orgs/kill/clients/k{n}/versions", {"version": org}
            else:
                path, body = "/v1/orgs", {"id": org, "name": f"writer {n} #{i}"}
            try:
                response = session.post(f"{cp.url}{path}", json=body, headers={"authorization": f"Bearer {token}"}, timeout=10)
            except requests.RequestException:
                with lock:
                    unanswered[0] += 1
                return
            with lock:
                if response.status_code == 201:
                    acked.append(org)
                else:
                    refused[response.status_code] += 1

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: len(acked) >= ACKED_BEFORE_KILL, 120, f"{ACKED_BEFORE_KILL} acknowledged writes", 0.01)
        cp.kill()  # SIGKILL while every writer has a request in flight
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    with lock:
        acknowledged = list(acked)

    integrity, on_disk = stored_after_kill(live, cp)
    assert integrity in (None, "ok"), integrity

    cp.start()
    listed: set[str] = set()
    cursor = None
    for _ in range(1000):  # pages of 500; bounded
        page = cp.ok("GET", "/v1/orgs?limit=500" + (f"&cursor={cursor}" if cursor else ""))
        listed |= {org["id"] for org in page["items"]}
        cursor = page.get("next_cursor")
        if not cursor:
            break
    for n in range(1, WRITERS, 2):
        cursor = None
        for _ in range(1000):
            page = cp.ok("GET", f"/v1/orgs/kill/clients/k{n}/versions?limit=500" + (f"&cursor={cursor}" if cursor else ""))
            listed |= {version["version"] for version in page["items"]}
            cursor = page.get("next_cursor")
            if not cursor:
                break
    # The stored snapshot buckets the kill left agree with the tables: the restarted control
    # plane's background check compares every bucket with a fresh render.
    def store_figure(name: str) -> float:
        return sum(v for _, _, v in prometheus_samples(cp.call("GET", "/metrics").text, name))

    wait_until(lambda: store_figure("tollgate_snapshot_consistency_checks_total") >= 1, 60, "the restarted control plane's consistency check", 0.1)
    drift = store_figure("tollgate_snapshot_drift_repaired_total")
    missing = [org for org in acknowledged if org not in listed]
    report_figure(
        "kill -9 under write load",
        f"{len(acknowledged)} writes acknowledged by {WRITERS} concurrent clients in {elapsed:.1f} s, "
        f"{len(acknowledged) - len(missing)} present after restart, {unanswered[0]} cut by the kill "
        f"(of those, {len({o for o in listed if o.startswith('w')} - set(acknowledged))} committed anyway), "
        f"refused {dict(refused)}, "
        f"integrity_check {integrity or 'n/a (PostgreSQL)'}, stored snapshot buckets drifted: {drift}",
    )
    assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {missing[:5]}"
    assert drift == 0, f"{drift} stored buckets differed from the tables after the kill"
    assert not refused, refused
    assert on_disk >= set(acknowledged)


# --- a faulty control plane ------------------------------------------------------------------

UNKNOWN_KEY = "faults-unknown-key-5d1c2b"
POLL_TIMEOUT_S = 1  # the gateway's long-poll wait; it gives up 5 s after that
HOLD_S = 8.0  # the slow fault holds each answer longer than the gateway waits


@pytest.fixture(scope="module")
def faulty(live: LiveProcesses):
    cp = live.control_plane()
    cp.org("acme")
    cp.locked_plan("acme", "gold", "1", (10_000_000, "day"))
    cp.api_version("acme", "orders", "1", "/orders/v1", plans=(("gold", "1"),))
    key = cp.client_version("acme", "mobile", "1")
    contract = cp.contract("acme/mobile/1", "acme/orders/1", "gold")
    no_contract_key = cp.client_version("acme", "stranger", "1")
    proxy = FaultProxy(cp.port, hold_s=HOLD_S)
    try:
        envoy = live.gateway(
            cp,
            control_plane_url=proxy.url,
            poller={"poll_timeout_seconds": POLL_TIMEOUT_S, "retry_initial_ms": 100, "retry_max_ms": 1000},
        )
        wait_all_workers_enforce(envoy, cp.revision(), deadline_s=30)
        yield cp, proxy, envoy, key, contract, no_contract_key
    finally:
        proxy.stop()


class Traffic:
    """Requests through the gateway in a thread: the keyed client, a client without a contract
    and an unknown key, each checked against what the snapshot in force says."""

    def __init__(self, envoy: Envoy, key: str, no_contract_key: str) -> None:
        self.expect = {key: {200}, no_contract_key: {403}, UNKNOWN_KEY: {401}}
        self.seen: Counter[int] = Counter()
        self.wrong: list[str] = []
        self._stop = threading.Event()
        self._envoy = envoy
        self._thread = threading.Thread(target=self._run)

    def __enter__(self) -> "Traffic":
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        session = requests.Session()
        for i in range(1_000_000):  # bounded; ends when the test does
            if self._stop.is_set():
                return
            key = list(self.expect)[i % len(self.expect)]
            try:
                response = session.get(f"{self._envoy.url}/orders/v1/items", headers={"x-api-key": key}, timeout=10)
            except requests.RequestException as error:
                self.wrong.append(f"no answer: {error}")
                session = requests.Session()
                continue
            self.seen[response.status_code] += 1
            if response.status_code not in self.expect[key]:
                self.wrong.append(f"{response.status_code} for {key[:6]}…: {response.text[:200]}")
            time.sleep(0.002)


def test_gateway_keeps_its_last_good_snapshot_through_a_faulty_control_plane(faulty, report_figure: Figure) -> None:
    cp, proxy, envoy, key, _, no_contract_key = faulty
    figures: list[str] = []
    with Traffic(envoy, key, no_contract_key) as traffic:
        for fault, metric in [("error", "fetch_errors"), ("reset", "fetch_errors"), ("slow", "fetch_errors"),
                              ("garbage", "rejected")]:
            before = getattr(snapshot_metrics(envoy), metric)
            started = time.monotonic()
            proxy.set_fault(fault)
            wait_until(lambda: getattr(snapshot_metrics(envoy), metric) > before, HOLD_S + 20,
                       f"the gateway to count a {fault} answer in tollgate_snapshot_{metric}_total", 0.1)
            proxy.set_fault(None)
            figures.append(f"{fault} {time.monotonic() - started:.1f} s")
        assert snapshot_metrics(envoy).revision == cp.revision()
    assert not traffic.wrong, traffic.wrong[:10]
    report_figure("faulty control plane", f"{sum(traffic.seen.values())} requests, answers {dict(traffic.seen)}, "
                  f"none failed; faults held: {', '.join(figures)}")


def test_tampered_snapshot_is_refused_and_the_change_waits_for_a_good_one(faulty, report_figure: Figure) -> None:
    """A revocation signed by the control plane but damaged on the way is refused: the gateway
    keeps admitting the client (the last good snapshot) until a good copy arrives."""
    cp, proxy, envoy, key, contract, no_contract_key = faulty
    revision = cp.revision()
    before = snapshot_metrics(envoy)
    proxy.set_fault("tamper")
    try:
        cp.delete_contract("acme/mobile/1", contract)
        wait_until(lambda: snapshot_metrics(envoy).rejected > before.rejected, 20,
                   "the gateway to refuse the tampered snapshot", 0.05)
        assert snapshot_metrics(envoy).revision == revision
        response = requests.get(f"{envoy.url}/orders/v1/items", headers={"x-api-key": key}, timeout=10)
        assert response.status_code == 200, response.text
        assert "refused a snapshot" in envoy.log()
    finally:
        proxy.set_fault(None)
    started = time.monotonic()
    wait_until(
        lambda: requests.get(f"{envoy.url}/orders/v1/items", headers={"x-api-key": key}, timeout=10).status_code == 403,
        20, "the revocation to arrive once the control plane answers cleanly",
    )
    report_figure("tampered snapshot", f"refused (rejected {snapshot_metrics(envoy).rejected:.0f}); "
                  f"revocation enforced {time.monotonic() - started:.2f} s after the fault ended")
    cp.contract("acme/mobile/1", "acme/orders/1", "gold")  # leave the module's client as it was


# --- Envoy restarted while traffic runs -----------------------------------------------------

RESTART_KEY = "faults-restart-busy-key-8e2f0a"
LIMITED_KEY = "faults-restart-limited-key-4b7d19"
LIMIT = 5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_envoy_restart_under_traffic_resets_counters_without_a_trap(upstream, wasm, tmp_path: Path, report_figure: Figure) -> None:
    catalogue = Catalogue(
        plans=[plan("acme/busy/1", limit(10_000_000, "day")), plan("acme/five/1", limit(LIMIT, "hour"))],
        apis=[api("acme/orders/1", "/orders/v1")],
        clients=[client("acme/busy/1", RESTART_KEY), client("acme/limited/1", LIMITED_KEY)],
    )
    catalogue.contract("acme/busy/1", "acme/orders/1", "acme/busy/1")
    catalogue.contract("acme/limited/1", "acme/orders/1", "acme/five/1")
    bootstrap = envoy_bootstrap(upstream.port, plugin_config(catalogue.snapshot()))
    port = free_port()
    bootstrap["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = port
    url = f"http://127.0.0.1:{port}/orders/v1/items"
    clear_of_window_end("hour", margin_s=60)

    def limited_admitted() -> int:
        statuses = [requests.get(url, headers={"x-api-key": LIMITED_KEY}, timeout=10).status_code for _ in range(LIMIT + 2)]
        assert set(statuses) <= {200, 429}, statuses
        return statuses.count(200)

    seen: Counter[str] = Counter()
    stop = threading.Event()

    def traffic() -> None:
        for _ in range(1_000_000):  # bounded; ends when the test does
            if stop.is_set():
                return
            try:
                status = requests.get(url, headers={"x-api-key": RESTART_KEY}, timeout=10).status_code
                seen[str(status)] += 1
            except requests.RequestException:
                seen["no connection"] += 1
                time.sleep(0.01)

    envoys: list[Envoy] = []
    thread = threading.Thread(target=traffic)
    try:
        envoys.append(Envoy.start(bootstrap, tmp_path / "first"))
        assert limited_admitted() == LIMIT
        thread.start()
        wait_until(lambda: seen["200"] >= 50, 30, "traffic through the first Envoy")
        envoys[0].stop()  # SIGTERM with requests in flight
        down = time.monotonic()
        envoys.append(Envoy.start(bootstrap, tmp_path / "second"))
        restart_s = time.monotonic() - down
        before = seen["200"]
        wait_until(lambda: seen["200"] >= before + 50, 30, "traffic through the restarted Envoy")
        # Counters lived in the first process's shared data: the window counts from zero.
        assert limited_admitted() == LIMIT
        for session in worker_sessions(envoys[1]):  # both workers' VMs decide
            assert session.get(url, headers={"x-api-key": RESTART_KEY}, timeout=10).status_code == 200
    finally:
        stop.set()
        if thread.is_alive():
            thread.join(timeout=30)
        for envoy in envoys:
            envoy.stop()
    for envoy in envoys:
        assert_no_trap(envoy.log())
    assert set(seen) <= {"200", "no connection"}, seen
    report_figure("envoy restart under traffic", f"{sum(seen.values())} requests: {dict(seen)}; "
                  f"new Envoy ready {restart_s:.1f} s after the old one stopped; limit of {LIMIT} admitted again")
