"""Plan limits: rate-limit headers on allowed responses, 429 with Retry-After when a limit is
exhausted, plans with two limits, and counters kept per contract.

Limits here are per day and per month, so counts made within a test cannot roll over, and the
module starts clear of the UTC day end (which every month end also is)."""

import math

import pytest
import requests

from harness import (
    Catalogue,
    Envoy,
    api,
    clear_of_window_end,
    client,
    echoed,
    limit,
    plan,
    plugin_config,
    problem,
    seconds_to_window_end,
)

GOLD_KEY = "limits-gold-key-1a2b"
TINY_KEY = "limits-tiny-key-3c4d"
TINY_TOO_KEY = "limits-tiny-too-key-5e6f"
MONTH_BOUND_KEY = "limits-month-bound-key-7a8b"
DAY_BOUND_KEY = "limits-day-bound-key-9c0d"

CATALOGUE = Catalogue(
    plans=[
        plan("acme/gold/1", limit(10000, "day")),
        plan("acme/tiny/1", limit(3, "day")),
        # Two limits; the one with the least remaining is the longer window here.
        plan("acme/month-bound/1", limit(50, "day"), limit(3, "month")),
        plan("acme/day-bound/1", limit(3, "day"), limit(50, "month")),
    ],
    apis=[api("acme/orders/1", "/orders/v1")],
    clients=[
        client("acme/gold-client/1", GOLD_KEY),
        client("acme/tiny-client/1", TINY_KEY),
        client("acme/tiny-too/1", TINY_TOO_KEY),
        client("acme/month-bound-client/1", MONTH_BOUND_KEY),
        client("acme/day-bound-client/1", DAY_BOUND_KEY),
    ],
)
CATALOGUE.contract("acme/gold-client/1", "acme/orders/1", "acme/gold/1")
CATALOGUE.contract("acme/tiny-client/1", "acme/orders/1", "acme/tiny/1")
CATALOGUE.contract("acme/tiny-too/1", "acme/orders/1", "acme/tiny/1")
CATALOGUE.contract("acme/month-bound-client/1", "acme/orders/1", "acme/month-bound/1")
CATALOGUE.contract("acme/day-bound-client/1", "acme/orders/1", "acme/day-bound/1")


@pytest.fixture(scope="module")
def envoy(start_envoy, wasm) -> Envoy:
    clear_of_window_end("day")
    return start_envoy(plugin_config(CATALOGUE.snapshot()))


def call(envoy: Envoy, key: str) -> requests.Response:
    return requests.get(f"{envoy.url}/orders/v1/items", headers={"x-api-key": key}, timeout=10)


def rate_limit_headers(response: requests.Response) -> tuple[int, int, int]:
    """(limit, remaining, reset) as integers; fails if any is missing or not an integer."""
    values = []
    for name in ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"):
        assert name in response.headers, f"{name} missing from {dict(response.headers)}"
        assert response.headers[name].isdigit(), f"{name}: {response.headers[name]!r}"
        values.append(int(response.headers[name]))
    return values[0], values[1], values[2]


def assert_reset_is_end_of(per: str, reset: int) -> None:
    expected = seconds_to_window_end(per)
    assert abs(reset - expected) <= 2, f"reset {reset}s, the {per} window ends in {expected:.1f}s"


def assert_retry_after_within(per: str, response: requests.Response) -> None:
    retry_after = response.headers.get("retry-after", "")
    assert retry_after.isdigit(), f"Retry-After: {retry_after!r}"
    window_left = seconds_to_window_end(per)
    assert 1 <= int(retry_after) <= math.ceil(window_left) + 1, (retry_after, window_left)


def test_allowed_response_carries_rate_limit_headers(envoy: Envoy) -> None:
    # One keep-alive connection, so one worker: its lease counts down exactly. (Another
    # worker's answers describe the counter as of its own last refill: README, leases.)
    with requests.Session() as session:
        first, second = (
            session.get(f"{envoy.url}/orders/v1/items", headers={"x-api-key": GOLD_KEY}, timeout=10)
            for _ in range(2)
        )
    echoed(first)
    echoed(second)
    limit_, remaining, reset = rate_limit_headers(first)
    assert (limit_, remaining) == (10000, 9999)
    assert_reset_is_end_of("day", reset)
    assert rate_limit_headers(second)[:2] == (10000, 9998)


def test_exhausted_limit_is_429_with_retry_after(envoy: Envoy) -> None:
    remaining = [rate_limit_headers(echoed_response(call(envoy, TINY_KEY)))[1] for _ in range(3)]
    assert remaining == [2, 1, 0]
    for _ in range(2):  # stays refused: a refusal consumes nothing and frees nothing
        response = call(envoy, TINY_KEY)
        assert response.status_code == 429
        problem(response)
        limit_, remaining_now, reset = rate_limit_headers(response)
        assert (limit_, remaining_now) == (3, 0)
        assert_reset_is_end_of("day", reset)
        assert_retry_after_within("day", response)


def test_limits_are_counted_per_contract(envoy: Envoy) -> None:
    # Same plan as the test above, another contract: a fresh count.
    for expected_remaining in (2, 1, 0):
        assert rate_limit_headers(echoed_response(call(envoy, TINY_TOO_KEY)))[1] == expected_remaining
    assert call(envoy, TINY_TOO_KEY).status_code == 429


def test_two_limits_headers_describe_the_least_remaining_longer_window(envoy: Envoy) -> None:
    for expected_remaining in (2, 1, 0):
        limit_, remaining, reset = rate_limit_headers(echoed_response(call(envoy, MONTH_BOUND_KEY)))
        assert (limit_, remaining) == (3, expected_remaining)
        assert_reset_is_end_of("month", reset)
    response = call(envoy, MONTH_BOUND_KEY)
    assert response.status_code == 429
    assert rate_limit_headers(response)[:2] == (3, 0)
    assert_retry_after_within("month", response)
    # The month is exhausted, so waiting for the day to end would not help.
    assert int(response.headers["retry-after"]) >= seconds_to_window_end("day") - 2


def test_two_limits_headers_describe_the_least_remaining_shorter_window(envoy: Envoy) -> None:
    for expected_remaining in (2, 1, 0):
        limit_, remaining, reset = rate_limit_headers(echoed_response(call(envoy, DAY_BOUND_KEY)))
        assert (limit_, remaining) == (3, expected_remaining)
        assert_reset_is_end_of("day", reset)
    response = call(envoy, DAY_BOUND_KEY)
    assert response.status_code == 429
    assert rate_limit_headers(response)[:2] == (3, 0)
    assert_retry_after_within("day", response)


def echoed_response(response: requests.Response) -> requests.Response:
    echoed(response)
    return response
