"""A per-second limit stays exact at every window boundary while both workers contend for the
counter: wrk fires at one contract for several seconds, Envoy's access log records when each
request arrived and how long it took, and no second admits more than its limit.

A request is decided somewhere between its arrival and its response, so an admitted request
whose whole [arrival, response] interval lies within one UTC second was certainly counted in
that second (with a stale stamp it counts in the newer stored window, which lies inside the
interval too). Those are checked against the limit per second; every admitted request is
checked against L x the seconds the run touched. The allowed route answers from Envoy itself
(direct_response), so the Python echo upstream does not cap the request rate, and the limit
is sized so that each second fills within a few milliseconds of its start: the boundary is
where both workers race on the counter's compare-and-swap."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from harness import WORKERS, Catalogue, Envoy, api, client, envoy_bootstrap, limit, plan, plugin_config, wait_until

LIMIT = 500  # per second
RUN_S = 8
BOUNDARY_KEY = "window-boundary-key-31"

CATALOGUE = Catalogue(
    plans=[plan("acme/per-second/1", limit(LIMIT, "second"))],
    apis=[api("acme/orders/1", "/orders/v1")],
    clients=[client("acme/boundary/1", BOUNDARY_KEY)],
)
CATALOGUE.contract("acme/boundary/1", "acme/orders/1", "acme/per-second/1")

# arrival (Unix seconds with milliseconds), duration in ms, status
ACCESS_LOG_FORMAT = "%START_TIME(%s.%3f)% %DURATION% %RESPONSE_CODE%\n"
LINE = re.compile(r"^(\d+)\.(\d{3}) (\d+) (\d{3})$")


def boundary_bootstrap(upstream_port: int, access_log: Path) -> dict[str, Any]:
    """The harness's bootstrap with an access log, and the allowed route answered by Envoy."""
    bootstrap = envoy_bootstrap(upstream_port, plugin_config(CATALOGUE.snapshot()))
    manager = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    manager["access_log"] = [
        {
            "name": "envoy.access_loggers.file",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                "path": str(access_log),
                "log_format": {"text_format_source": {"inline_string": ACCESS_LOG_FORMAT}},
            },
        }
    ]
    route = manager["route_config"]["virtual_hosts"][0]["routes"][0]
    route.pop("route")
    route["direct_response"] = {"status": 200, "body": {"inline_string": "ok"}}
    return bootstrap


def read_log(path: Path) -> list[tuple[int, int, int]]:
    """(arrival ms, duration ms, status) of every complete line."""
    entries = []
    for line in path.read_text().splitlines():
        match = LINE.match(line)
        if match:
            seconds, millis, duration, status = (int(g) for g in match.groups())
            entries.append((seconds * 1000 + millis, duration, status))
    return entries


@pytest.fixture(scope="module")
def wrk() -> str:
    found = shutil.which("wrk")
    if found is None:
        pytest.fail("wrk is missing: scripts/setup.sh installs it", pytrace=False)
    return found


def test_no_second_admits_more_than_its_limit_under_boundary_contention(
    upstream: Any, wasm: Path, wrk: str, tmp_path: Path, report_figure: Any
) -> None:
    access_log = tmp_path / "access.log"
    envoy = Envoy.start(boundary_bootstrap(upstream.port, access_log), tmp_path / "envoy")
    try:
        run = subprocess.run(
            [
                wrk, "-t", "2", "-c", "64", "-d", f"{RUN_S}s",
                "-H", f"x-api-key: {BOUNDARY_KEY}",
                f"http://127.0.0.1:{envoy.port}/orders/v1/items",
            ],
            capture_output=True, text=True, timeout=RUN_S + 60, check=True,
        )
        completed = re.search(r"(\d+) requests in", run.stdout)
        assert completed, run.stdout
        sent = int(completed.group(1))
        # Envoy flushes its access log on a timer: wait until every answered request is in it.
        entries = wait_until(
            lambda: (e := read_log(access_log)) and len(e) >= sent and e, 30, "the access log to catch up"
        )
        cas_retries = sum(envoy.stats(r"tollgate_cas_retries_total").values())
        per_worker = envoy.stats(r"^listener\.127\.0\.0\.1_\d+\.worker_\d+\.downstream_cx_total$")
    finally:
        envoy.stop()

    statuses = Counter(status for _, _, status in entries)
    assert set(statuses) <= {200, 429}, statuses
    # Both figures are truncated to the millisecond: a request logged (S, D) ran within
    # [S, S + D + 2) ms.
    admitted = [(start, start + duration + 2) for start, duration, status in entries if status == 200]
    first_s = min(start for start, _, _ in entries) // 1000
    last_s = max(start + duration + 1 for start, duration, _ in entries) // 1000
    seconds_touched = last_s - first_s + 1
    certain = Counter(start // 1000 for start, end in admitted if start // 1000 == (end - 1) // 1000)
    busiest = max(certain.values(), default=0)
    report_figure(
        "window boundaries",
        f"{len(entries)} requests ({statuses[200]} admitted, {statuses[429]} 429) over {seconds_touched} "
        f"seconds at {LIMIT}/s: admitted <= {LIMIT * seconds_touched} allowed; busiest second "
        f"{busiest} (of {sum(certain.values())} admissions attributable to one second); "
        f"{cas_retries} CAS retries; connections per worker {sorted(per_worker.values())}",
    )
    assert len(per_worker) == WORKERS and all(n > 0 for n in per_worker.values()), per_worker
    assert statuses[200] <= LIMIT * seconds_touched
    over = {second: n for second, n in certain.items() if n > LIMIT}
    assert not over, f"seconds that admitted more than {LIMIT}: {over}"
    # The run is only a test of boundaries if the limit was reached in most seconds.
    full = sum(1 for n in certain.values() if n >= LIMIT * 0.9)
    assert full >= RUN_S // 2, f"only {full} seconds came near the limit: {sorted(certain.items())}"
    assert statuses[429] > 0
