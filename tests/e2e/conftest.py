"""Fixtures: one echo upstream per session, Envoys per test module, all stopped on teardown."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from harness import WASM, EchoUpstream, Envoy, envoy_bootstrap


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
    """On failure, show the tail of the log of the test's Envoy next to the assertion."""
    report = yield
    if report.failed:
        for value in getattr(item, "funcargs", {}).values():
            if isinstance(value, Envoy):
                report.sections.append(("envoy log (tail)", value.log()[-4000:]))
    return report
