"""A highly available control plane (issue 14): two replicas (`tollgate serve --database`, the
same PostgreSQL database, a data directory each, the same secrets) behind one Envoy cluster of
one live-mode gateway.

- writes alternating between the replicas are each enforced by the gateway;
- the same object created on both at once: one 201, the other the 409 one replica answers,
  and exactly one of it stored;
- the replica the gateway polls killed (SIGKILL) under traffic: no request fails, and the
  gateway follows the survivor;
- a replica killed under 8 concurrent writers spread over both: every acknowledged write is on
  the survivor, and on the killed one once it is back;
- PostgreSQL restarted: while it is down each replica's `/healthz` says 503 degraded and the
  gateway enforces its last snapshot; once it is back, the replicas write again at the first
  attempt and the gateway follows.

One PostgreSQL (the session's), one pair of replicas and one gateway serve the whole module; a
test that kills a replica starts it again on the same port before it ends. The figures are
printed under "measured".
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any, Callable, Iterator

import pytest
import requests

from harness import Envoy, clear_of_window_end, problem, prometheus_samples, remember_secret, wait_until
from live import (
    CHANGE_DEADLINE_S,
    RECONNECT_DEADLINE_S,
    ControlPlane,
    LiveProcesses,
    answered,
    get,
    wait_all_workers_enforce,
)
from postgres import Postgres

Figure = Callable[[str, str], None]

ORDERS = "/orders/v1/items"
# A replica learns another's commit from NOTIFY, or from its once-a-second catch-up read; the
# product aims at well under a second. This bound only guards against a loaded machine.
REPLICA_DEADLINE_S = 15.0
# How long storage may take to say it is failing: the replicas read it once a second.
STORAGE_DOWN_DEADLINE_S = 15.0


class Pair:
    """The module's two replicas and their gateway."""

    def __init__(self, a: ControlPlane, b: ControlPlane, envoy: Envoy) -> None:
        self.a, self.b, self.envoy = a, b, envoy

    @property
    def both(self) -> tuple[ControlPlane, ControlPlane]:
        return self.a, self.b


@pytest.fixture(scope="module")
def pair(live: LiveProcesses, postgres: Postgres) -> Pair:
    a, b = live.replicas(postgres)
    a.org("acme")
    a.locked_plan("acme", "gold", "1", (1_000_000, "day"))
    a.locked_plan("acme", "three", "1", (3, "day"))
    a.locked_plan("acme", "five", "1", (5, "day"))
    a.api_version("acme", "orders", "1", "/orders/v1", plans=(("gold", "1"), ("three", "1"), ("five", "1")))
    caught_up(b, a.revision())
    envoy = live.gateway(a, replicas=(b,))
    wait_all_workers_enforce(envoy, a.revision(), deadline_s=30)
    return Pair(a, b, envoy)


def caught_up(replica: ControlPlane, revision: int, deadline_s: float = REPLICA_DEADLINE_S) -> float:
    """Waits until `replica` serves `revision` or a later one; the seconds it took."""
    started = time.monotonic()
    wait_until(lambda: replica.revision() >= revision, deadline_s, f"{replica.url} to reach revision {revision}")
    return time.monotonic() - started


def enforced(pair: Pair, replica: ControlPlane, deadline_s: float = CHANGE_DEADLINE_S * 3) -> float:
    """Seconds from now until every worker of the gateway enforces `replica`'s latest revision."""
    started = time.monotonic()
    wait_all_workers_enforce(pair.envoy, replica.revision(), deadline_s)
    return time.monotonic() - started


def long_polls_waiting(replica: ControlPlane) -> float:
    text = requests.get(f"{replica.url}/metrics", timeout=5).text
    return sum(v for _, _, v in prometheus_samples(text, "tollgate_snapshot_long_polls_waiting"))


def polled(pair: Pair) -> ControlPlane:
    """The replica holding the gateway's long poll (its one poller holds one at a time)."""

    def holding() -> list[ControlPlane] | None:
        waiting = [r for r in pair.both if r.running() and long_polls_waiting(r) == 1]
        return waiting if len(waiting) == 1 else None

    found: list[ControlPlane] = wait_until(holding, REPLICA_DEADLINE_S, "exactly one replica to hold the gateway's long poll")
    return found[0]


def listed(replica: ControlPlane, path: str, field: str = "id") -> list[str]:
    """Every item of a paged list, in order."""
    items: list[str] = []
    cursor = None
    for _ in range(1000):  # pages of 500; bounded
        page = replica.ok("GET", f"{path}?limit=500" + (f"&cursor={cursor}" if cursor else ""))
        items += [str(item[field]) for item in page["items"]]
        cursor = page.get("next_cursor")
        if not cursor:
            return items
    raise AssertionError(f"{path}: more than 1000 pages")


def restarted(replica: ControlPlane, other: ControlPlane) -> float:
    """Starts a killed `replica` again (same data directory and port); the seconds until it
    serves what `other` holds."""
    started = time.monotonic()
    replica.start()
    caught_up(replica, other.revision())
    return time.monotonic() - started


# --- writes on either replica ----------------------------------------------------------------


def test_writes_alternating_between_replicas_are_each_enforced(pair: Pair, report_figure: Figure) -> None:
    clear_of_window_end("day")
    key = pair.a.client_version("acme", "alternating", "1")
    client = "acme/alternating/1"
    times: dict[str, float] = {}

    # On A: a contract; the key works.
    gold = pair.a.contract(client, "acme/orders/1", "gold")
    started = time.monotonic()
    answered(pair.envoy, ORDERS, key, 200, CHANGE_DEADLINE_S * 3)
    times["contract created on A, key works"] = time.monotonic() - started
    enforced(pair, pair.a)

    # On B: the client's limit changed (the contract moved from gold to three a day).
    pair.b.delete_contract(client, gold)
    three = pair.b.contract(client, "acme/orders/1", "three")
    times["limit changed on B, enforced"] = enforced(pair, pair.b)
    answers = [get(pair.envoy, ORDERS, key) for _ in range(5)]
    assert [r.status_code for r in answers] == [200, 200, 200, 429, 429], [r.text for r in answers]
    assert answers[0].headers["x-ratelimit-limit"] == "3", dict(answers[0].headers)

    # On A again: the contract deleted; the key is refused.
    pair.a.delete_contract(client, three)
    started = time.monotonic()
    refused = answered(pair.envoy, ORDERS, key, 403, CHANGE_DEADLINE_S * 3)
    times["contract deleted on A, key refused"] = time.monotonic() - started
    problem(refused)
    enforced(pair, pair.a)
    assert get(pair.envoy, ORDERS, key).status_code == 403

    report_figure(
        "replicas: write to enforcement at the gateway",
        ", ".join(f"{what} in {seconds * 1000:.0f} ms" for what, seconds in times.items()),
    )


ROUNDS = 20


def test_the_same_object_created_on_both_replicas_at_once_is_created_once(pair: Pair, report_figure: Figure) -> None:
    """Each round, one org and one client version, each posted to both replicas at the same
    moment: one 201, the other the 409 a single replica answers to a duplicate, and each
    replica lists exactly one."""
    pair.a.ok("POST", "/v1/orgs/acme/clients", {"id": "racer"})
    caught_up(pair.b, pair.a.revision())
    outcomes: Counter[str] = Counter()
    for n in range(ROUNDS):
        for path, body, list_path, field in (
            ("/v1/orgs", {"id": f"race-{n}"}, "/v1/orgs", "id"),
            ("/v1/orgs/acme/clients/racer/versions", {"version": f"v{n}"}, "/v1/orgs/acme/clients/racer/versions", "version"),
        ):
            answers = posted_on_both_at_once(pair, path, body)
            statuses = sorted(r.status_code for r in answers)
            assert statuses == [201, 409], [(r.status_code, r.text) for r in answers]
            winner = 0 if answers[0].status_code == 201 else 1
            outcomes["A won" if winner == 0 else "B won"] += 1
            loser = answers[1 - winner]
            # The same refusal one replica gives to a duplicate, asked of the loser's replica.
            again = pair.both[1 - winner].call("POST", path, body)
            assert again.status_code == 409
            assert problem(loser) == problem(again), (loser.text, again.text)
            remember_secret(str(answers[winner].json().get("api_key", "")))
            revision = max(r.revision() for r in pair.both)
            for replica in pair.both:
                caught_up(replica, revision)
                names = listed(replica, list_path, field)
                expected = body.get("id", body.get("version"))
                assert names.count(expected) == 1, (replica.url, expected, names.count(expected))
    report_figure(
        "replicas: conflicting creations",
        f"{ROUNDS} rounds × 2 kinds, each posted to both replicas at once: "
        f"every one 201 + the single-replica 409; {dict(outcomes)}",
    )


def posted_on_both_at_once(pair: Pair, path: str, body: dict[str, Any]) -> list[requests.Response]:
    """`body` POSTed to `path` on both replicas from two threads released together."""
    barrier = threading.Barrier(2)
    answers: list[requests.Response | None] = [None, None]
    sessions = [requests.Session(), requests.Session()]
    for session, replica in zip(sessions, pair.both):  # connections open before the race
        session.get(f"{replica.url}/healthz", timeout=5)

    def post(i: int) -> None:
        replica = pair.both[i]
        headers = {"authorization": f"Bearer {replica.secret('TOLLGATE_ADMIN_TOKEN')}"}
        barrier.wait(timeout=10)
        answers[i] = sessions[i].post(f"{replica.url}{path}", json=body, headers=headers, timeout=30)

    threads = [threading.Thread(target=post, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for session in sessions:
        session.close()
    assert all(answer is not None for answer in answers), "a replica did not answer"
    return [answer for answer in answers if answer is not None]


# --- a replica killed ------------------------------------------------------------------------


class Traffic:
    """A steady stream of requests through the gateway with a key allowed a million a day, in
    a thread, each on a fresh connection (so either worker); every answer that is not 200 is
    kept."""

    def __init__(self, envoy: Envoy, key: str) -> None:
        self.envoy, self.key = envoy, key
        self.answered = 0
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def __enter__(self) -> "Traffic":
        self._thread.start()
        wait_until(lambda: self.answered >= 20, 30, "traffic through the gateway")
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                response = get(self.envoy, ORDERS, self.key)
                if response.status_code != 200:
                    self.failed.append(f"{response.status_code} {response.text[:200]}")
            except requests.RequestException as error:
                self.failed.append(repr(error))
            self.answered += 1


def keyed_client(pair: Pair, replica: ControlPlane, name: str, plan: str = "gold") -> str:
    """A new client version with a contract on `plan`, made on `replica`; its key."""
    key = replica.client_version("acme", name, "1")
    replica.contract(f"acme/{name}/1", "acme/orders/1", plan)
    return key


def test_killing_the_replica_the_gateway_polls_fails_no_request(pair: Pair, report_figure: Figure) -> None:
    key = keyed_client(pair, pair.a, "steady")
    answered(pair.envoy, ORDERS, key, 200, CHANGE_DEADLINE_S * 3)
    victim = polled(pair)
    survivor = pair.b if victim is pair.a else pair.a
    with Traffic(pair.envoy, key) as traffic:
        before = traffic.answered
        victim.kill()
        killed = time.monotonic()
        # A write on the survivor reaches the gateway: its poller found the survivor.
        late_key = keyed_client(pair, survivor, "after-kill")
        answered(pair.envoy, ORDERS, late_key, 200, RECONNECT_DEADLINE_S)
        followed_s = time.monotonic() - killed
        wait_until(lambda: traffic.answered >= before + 200, 60, "traffic after the kill")
    assert not traffic.failed, f"{len(traffic.failed)} of {traffic.answered} requests failed: {traffic.failed[:5]}"
    assert polled(pair) is survivor
    back_s = restarted(victim, survivor)
    report_figure(
        "replicas: the polled replica killed under traffic",
        f"{traffic.answered} requests, {traffic.answered - before} after the kill, {len(traffic.failed)} failed; "
        f"a write on the survivor enforced {followed_s:.1f} s after the kill; "
        f"the killed replica back and caught up in {back_s:.1f} s",
    )


WRITERS = 8
ACKED_BEFORE_KILL = 300


def test_writes_acknowledged_by_either_replica_survive_the_kill_of_one(pair: Pair, report_figure: Figure) -> None:
    """8 writers, half on each replica, create orgs; one replica is SIGKILLed mid-stream. Its
    writers stop at their first unanswered request; the others go on a little. Every 201 is
    on the survivor, and on the killed replica once it is back."""
    victim, survivor = pair.a, pair.b
    acked: list[str] = []
    unanswered: list[str] = []
    refused: Counter[int] = Counter()
    lock = threading.Lock()
    stop = threading.Event()

    def writer(n: int) -> None:
        replica = pair.both[n % 2]
        session = requests.Session()
        headers = {"authorization": f"Bearer {replica.secret('TOLLGATE_ADMIN_TOKEN')}"}
        for i in range(100_000):  # bounded; ends at the kill or the stop
            if stop.is_set():
                return
            org = f"w{n}-{i}"
            try:
                response = session.post(f"{replica.url}/v1/orgs", json={"id": org}, headers=headers, timeout=30)
            except requests.RequestException:
                with lock:
                    unanswered.append(org)
                return
            with lock:
                if response.status_code == 201:
                    acked.append(org)
                else:
                    refused[response.status_code] += 1

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: len(acked) >= ACKED_BEFORE_KILL, 120, f"{ACKED_BEFORE_KILL} acknowledged writes", 0.01)
        victim.kill()
        at_kill = len(acked)
        # The survivor's writers go on: as many again.
        wait_until(lambda: len(acked) >= 2 * at_kill, 120, "writes on the survivor after the kill", 0.01)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    with lock:
        acknowledged = list(acked)

    on_survivor = set(listed(survivor, "/v1/orgs"))
    missing = [org for org in acknowledged if org not in on_survivor]
    back_s = restarted(victim, survivor)
    on_victim = set(listed(victim, "/v1/orgs"))
    missing_on_victim = [org for org in acknowledged if org not in on_victim]
    cut_but_committed = [org for org in unanswered if org in on_survivor]
    report_figure(
        "replicas: one killed under 8 writers on both",
        f"{len(acknowledged)} writes acknowledged ({at_kill} before the kill), "
        f"{len(acknowledged) - len(missing)} on the survivor, {len(acknowledged) - len(missing_on_victim)} "
        f"on the killed replica {back_s:.1f} s after its restart; {len(unanswered)} cut by the kill "
        f"({len(cut_but_committed)} committed anyway); refused {dict(refused)}",
    )
    assert not refused, refused
    assert not missing, f"{len(missing)} acknowledged writes missing on the survivor, e.g. {missing[:5]}"
    assert not missing_on_victim, f"{len(missing_on_victim)} missing on the restarted replica, e.g. {missing_on_victim[:5]}"
    assert on_victim == on_survivor


# --- PostgreSQL restarted --------------------------------------------------------------------


# What a replica logs each second it cannot read what the others committed.
FAILED_CATCH_UP = "could not read the revision other replicas committed"
OUTAGE_CHECKS = 3


def health(replica: ControlPlane) -> requests.Response:
    return requests.get(f"{replica.url}/healthz", timeout=5)


def healthy_again(pair: Pair) -> float:
    """Waits until both replicas' `/healthz` answer 200; the seconds it took."""
    started = time.monotonic()
    for replica in pair.both:
        wait_until(
            lambda replica=replica: health(replica).status_code == 200,
            RECONNECT_DEADLINE_S,
            f"{replica.url}/healthz to answer 200 again",
        )
    return time.monotonic() - started


def test_postgres_restarted_replicas_say_so_gateway_enforces_its_snapshot_and_follows_after(
    pair: Pair, postgres: Postgres, report_figure: Figure
) -> None:
    clear_of_window_end("day")
    allowed = keyed_client(pair, pair.a, "through-outage")
    limited = keyed_client(pair, pair.b, "counted-through-outage", plan="five")
    enforced(pair, pair.b)
    assert [get(pair.envoy, ORDERS, limited).status_code for _ in range(2)] == [200, 200]

    logged = {replica.url: len(replica.log()) for replica in pair.both}
    replica_revision_before = {replica.url: replica.revision() for replica in pair.both}
    postgres.stop()
    stopped = time.monotonic()
    try:
        for replica in pair.both:
            wait_until(
                lambda replica=replica: health(replica).status_code != 200,
                STORAGE_DOWN_DEADLINE_S,
                f"{replica.url}/healthz to report PostgreSQL down",
            )
        said_s = time.monotonic() - stopped
        # An outage of some seconds: each replica has failed its once-a-second catch-up read
        # OUTAGE_CHECKS times.
        for replica in pair.both:
            wait_until(
                lambda replica=replica: replica.log()[logged[replica.url]:].count(FAILED_CATCH_UP) >= OUTAGE_CHECKS,
                STORAGE_DOWN_DEADLINE_S,
                f"{replica.url} to fail {OUTAGE_CHECKS} catch-up reads",
            )
        for replica in pair.both:
            # What /healthz says of storage failing: 503 degraded, the revision it holds, why.
            answer = health(replica)
            assert answer.status_code == 503, (replica.url, answer.status_code, answer.text)
            body = answer.json()
            assert body["status"] == "degraded", answer.text
            assert "PostgreSQL" in body["detail"], answer.text
            assert body["revision"] == replica_revision_before[replica.url], answer.text
        # The gateway enforces the snapshot it holds: the allowed key still allowed, the limit
        # still counted (3 of 5 left), a key it never saw refused.
        assert get(pair.envoy, ORDERS, allowed).status_code == 200
        counted = [get(pair.envoy, ORDERS, limited).status_code for _ in range(4)]
        assert counted == [200, 200, 200, 429], counted
        assert get(pair.envoy, ORDERS, "replicas-never-issued-key-7c1e").status_code == 401
        for replica in pair.both:
            assert health(replica).status_code == 503, f"{replica.url}/healthz: not degraded while PostgreSQL is down"
    finally:
        down_s = time.monotonic() - stopped
        postgres.start()
    restarted_at = time.monotonic()

    healthy_s = healthy_again(pair)
    # Each replica writes again, at the first attempt (the next test asks more of this).
    first_writes = {
        name: replica.call("POST", "/v1/orgs", {"id": f"after-outage-{name}"}).status_code
        for name, replica in zip("ab", pair.both)
    }
    assert first_writes == {"a": 201, "b": 201}, first_writes
    after = keyed_client(pair, pair.b, "after-outage")
    answered(pair.envoy, ORDERS, after, 200, RECONNECT_DEADLINE_S)
    followed_s = time.monotonic() - restarted_at
    caught_up(pair.a, pair.b.revision())
    assert get(pair.envoy, ORDERS, limited).status_code == 429
    assert get(pair.envoy, ORDERS, allowed).status_code == 200
    report_figure(
        "replicas: PostgreSQL stopped and started",
        f"both /healthz 503 degraded {said_s:.1f} s after the stop; PostgreSQL down {down_s:.1f} s, the gateway "
        f"enforcing its snapshot throughout; both /healthz 200 {healthy_s:.1f} s after the start; "
        f"statuses of the first write on each replica {first_writes}; "
        f"a new write enforced at the gateway {followed_s:.1f} s after the start",
    )


def test_the_first_requests_after_postgres_is_back_succeed(pair: Pair, postgres: Postgres) -> None:
    postgres.stop()
    try:
        for replica in pair.both:
            wait_until(lambda replica=replica: health(replica).status_code != 200, STORAGE_DOWN_DEADLINE_S,
                       f"{replica.url}/healthz to report PostgreSQL down")
    finally:
        postgres.start()
    healthy_again(pair)
    statuses: Counter[int] = Counter()
    lock = threading.Lock()

    def reads(replica: ControlPlane) -> None:
        for _ in range(5):
            status = replica.call("GET", "/v1/orgs/acme").status_code
            with lock:
                statuses[status] += 1

    # More concurrent readers than a replica has read connections, so each is used.
    threads = [threading.Thread(target=reads, args=(pair.both[n % 2],)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for name, replica in zip("ab", pair.both):
        statuses[replica.call("POST", "/v1/orgs", {"id": f"first-after-restart-{name}"}).status_code] += 1
    assert set(statuses) == {200, 201}, dict(statuses)
