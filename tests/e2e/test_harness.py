"""The harness itself: a plain Envoy 1.40 (no tollgate filter) in front of the echo upstream.
If these fail, no other result of the suite means anything."""

from harness import WORKERS, Envoy, echoed

import pytest
import requests


@pytest.fixture(scope="module")
def plain_envoy(start_envoy) -> Envoy:
    return start_envoy(None)


def test_envoy_is_the_pinned_release_with_two_workers(plain_envoy: Envoy) -> None:
    info = plain_envoy.server_info()
    assert "/1.40.0/" in info["version"]
    assert int(info["command_line_options"]["concurrency"]) == WORKERS


def test_request_reaches_the_echo_upstream_as_sent(plain_envoy: Envoy) -> None:
    response = requests.get(
        f"{plain_envoy.url}/anything/here?x=1", headers={"x-probe": "yes"}, timeout=5
    )
    body = echoed(response)
    assert body["method"] == "GET"
    assert body["path"] == "/anything/here?x=1"
    assert body["headers"]["x-probe"] == "yes"


def test_listener_normalises_paths_before_filters(plain_envoy: Envoy) -> None:
    body = echoed(requests.get(f"{plain_envoy.url}/a//b/../c", timeout=5))
    assert body["path"] == "/a/c"
