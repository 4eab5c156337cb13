"""Fixtures: one echo upstream per session, Envoys per test module, all stopped on teardown;
the control plane binary for live mode, the figures live-mode tests measure, and the
session-wide check that no API key or token ever reached a log."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

import harness
from harness import WASM, EchoUpstream, Envoy, envoy_bootstrap
from fleet import FleetPool, redis_server
from live import TOLLGATE, ControlPlane, LiveProcesses, on_postgres
from postgres import Postgres


# A module constant named KEY or *_KEY, or a test parameter named *key, holding a string at
# least this long, is a key the suite sends; shorter strings would match unrelated log text.
_KEY_NAME = re.compile(r"(^|_)KEY$|(^|_)key$")
_MIN_SECRET_LEN = 12


def _keys_the_tests_use(session: pytest.Session, root: Path) -> set[str]:
    keys: set[str] = set()
    modules = {id(item.module): item.module for item in session.items if getattr(item, "module", None)}
    for module in modules.values():
        keys |= {v for k, v in vars(module).items() if _KEY_NAME.search(k) and isinstance(v, str)}
    for item in session.items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        keys |= {v for k, v in params.items() if _KEY_NAME.search(k) and isinstance(v, str)}
    # The demo keeps the keys it was issued in `<demo dir>/keys`: "<client version> <key>".
    for keys_file in root.rglob("keys"):
        if keys_file.is_file():
            keys |= {line.split()[-1] for line in keys_file.read_text(errors="replace").splitlines() if line.strip()}
    return keys


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_any_log(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """Keys are never logged: at the end of the session, every log the suite's processes wrote
    (Envoy, control planes, echo upstreams, the demo's) is searched for every API key the suite
    issued or sent and every control-plane token it read. Processes started without a directory
    of their own log under the session's temporary directory, and nothing there is deleted
    before this runs, so every log is still there to be read."""
    root = tmp_path_factory.getbasetemp()
    harness.SCRATCH = root / "scratch"
    harness.SCRATCH.mkdir(exist_ok=True)
    yield
    secrets = {s for s in harness.SECRETS | _keys_the_tests_use(request.session, root) if len(s) >= _MIN_SECRET_LEN}
    logs = {p for p in harness.LOGS if p.exists()} | {p for p in root.rglob("*.log") if p.is_file()}
    leaks: list[str] = []
    scanned = 0
    for log in sorted(logs):
        text = log.read_bytes()
        scanned += len(text)
        leaks += [f"{log}: a secret starting {s[:6]!r}" for s in secrets if s.encode() in text]
    _FIGURES.append(
        f"secrets in logs: {len(secrets)} keys and tokens searched in {len(logs)} logs "
        f"({scanned / 1e6:.1f} MB): {len(leaks)} found"
    )
    if leaks:
        pytest.fail("secrets found in logs:\n" + "\n".join(leaks[:20]), pytrace=False)


@pytest.fixture(scope="session")
def wasm() -> Path:
    if not WASM.exists():
        pytest.fail(f"{WASM} is missing: build it with scripts/build-wasm.sh", pytrace=False)
    return WASM


@pytest.fixture(scope="session")
def upstream() -> Iterator[EchoUpstream]:
    echo = EchoUpstream()
    try:
        yield echo
    finally:
        echo.stop()


@pytest.fixture(scope="session")
def tollgate_binary(wasm: Path) -> Path:
    """The control plane / CLI (`tollgate`), which scripts/test.sh builds before the suite."""
    if not TOLLGATE.exists():
        pytest.fail(f"{TOLLGATE} is missing: cargo build -p tollgate-control-plane", pytrace=False)
    return TOLLGATE


@pytest.fixture(scope="module")
def live(
    request: pytest.FixtureRequest,
    upstream: EchoUpstream,
    tollgate_binary: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LiveProcesses]:
    """Starts control planes and live-mode gateways in front of the echo upstream; every one
    is stopped when the module's tests are done, however they ended. With
    `TOLLGATE_TEST_BACKEND=postgres` each control plane keeps its catalogue in a fresh database
    of the session's PostgreSQL (the `postgres` fixture, started only then)."""
    postgres = request.getfixturevalue("postgres") if on_postgres() else None
    processes = LiveProcesses(upstream.port, tmp_path_factory.mktemp("live"), postgres)
    try:
        yield processes
    finally:
        processes.stop_all()


@pytest.fixture(scope="module")
def fleets(
    upstream: EchoUpstream, tollgate_binary: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FleetPool]:
    """Fleet mode (tests/e2e/fleet.py): `fleets.get(fallback, plans)` gives a running fleet —
    Redis, a control plane with `--redis` and that `--fleet-fallback`, 3 Envoys of 2 workers —
    reused by the module's tests while it is whole; everything is stopped when they are done."""
    try:
        redis_server()
    except RuntimeError as error:
        pytest.fail(str(error), pytrace=False)
    pool = FleetPool(tmp_path_factory.mktemp("fleet"), upstream.port)
    try:
        yield pool
    finally:
        pool.stop()


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    """A private PostgreSQL cluster (tests/e2e/postgres.py) for the session: each test creates
    databases of its own in it (`postgres.create_database(name)`); a test may stop, kill or
    restart the server, and leaves it running. Deleted when the session ends."""
    try:
        server = Postgres(tmp_path_factory.mktemp("postgres"))
    except RuntimeError as error:
        pytest.fail(str(error), pytrace=False)
    try:
        yield server.start()
    finally:
        server.destroy()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "backend: the test's control planes keep their catalogue where TOLLGATE_TEST_BACKEND says "
        "(SQLite unless it is postgres); set on every test that uses the `live` fixture",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # scripts/test.sh runs the tests marked so a second time, on PostgreSQL.
    for item in items:
        if "live" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.backend)


EnvoyFactory = Callable[..., Envoy]


@pytest.fixture(scope="module")
def start_envoy(upstream: EchoUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnvoyFactory]:
    """Starts Envoys in front of the echo upstream: `start_envoy(plugin_config_or_None)`.
    Every Envoy started through it is stopped when the module's tests are done."""
    started: list[Envoy] = []

    def start(plugin: dict[str, Any] | str | None, wasm: Path = WASM) -> Envoy:
        workdir = tmp_path_factory.mktemp("envoy")
        envoy = Envoy.start(envoy_bootstrap(upstream.port, plugin, wasm), workdir)
        started.append(envoy)
        return envoy

    try:
        yield start
    finally:
        for envoy in started:
            envoy.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """On failure, show the tail of the logs of the test's Envoys and control planes (fixture
    values, their attributes, or lists in those) next to the assertion."""
    report = yield
    if report.failed:
        seen: set[int] = set()
        for value in getattr(item, "funcargs", {}).values():
            attributes = list(getattr(value, "__dict__", {}).values())
            listed = [x for attribute in attributes if isinstance(attribute, list) for x in attribute]
            for part in [value, *attributes, *listed]:
                if id(part) in seen or not isinstance(part, (Envoy, ControlPlane)):
                    continue
                seen.add(id(part))
                title = "envoy log (tail)" if isinstance(part, Envoy) else "control plane log (tail)"
                report.sections.append((title, part.log()[-4000:]))
    return report


_FIGURES: list[str] = []


@pytest.fixture
def report_figure(record_property: Callable[[str, object], None]) -> Callable[[str, str], None]:
    """Records a measured figure (`name`, `text`): in the JUnit properties, and printed in the
    terminal summary so it shows in CI output without `-s`."""

    def report(name: str, text: str) -> None:
        record_property(name, text)
        _FIGURES.append(f"{name}: {text}")

    return report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _FIGURES:
        terminalreporter.section("measured")
        for line in _FIGURES:
            terminalreporter.write_line(line)
