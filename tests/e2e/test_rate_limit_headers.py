"""The filter option `rate_limit_headers`: `x-ratelimit` (default: X-RateLimit-Limit,
-Remaining, -Reset), `ietf` (the IETF draft's one `RateLimit` field, plus `RateLimit-Policy` on
429) or `none`; Retry-After on 429 whatever the style; any other value refused at load naming
the field."""

from __future__ import annotations

import re

import pytest
import requests

from harness import Catalogue, Envoy, api, client, envoy_bootstrap, limit, plan, plugin_config, run_envoy_until_refused

KEY = "ratelimit-style-key-51a0c2"


def catalogue() -> dict:
    # Two a day: the second request has none left, the third is refused.
    return (
        Catalogue(
            plans=[plan("acme/two/1", limit(2, "day"))],
            apis=[api("acme/orders/1", "/orders/v1")],
            clients=[client("acme/mobile/1", KEY)],
        )
        .contract("acme/mobile/1", "acme/orders/1", "acme/two/1")
        .snapshot()
    )


def three(envoy: Envoy) -> list[requests.Response]:
    return [requests.get(f"{envoy.url}/orders/v1/x", headers={"x-api-key": KEY}, timeout=10) for _ in range(3)]


def test_ietf_style_sends_one_ratelimit_field_and_the_policy_on_429(start_envoy, wasm) -> None:
    first, second, limited = three(start_envoy(plugin_config(catalogue(), rate_limit_headers="ietf")))
    assert [r.status_code for r in (first, second, limited)] == [200, 200, 429]
    assert re.fullmatch(r'"tollgate";r=1;t=\d+', first.headers["ratelimit"]), first.headers
    assert "x-ratelimit-limit" not in first.headers
    assert re.fullmatch(r'"tollgate";r=0;t=\d+', limited.headers["ratelimit"]), limited.headers
    assert limited.headers["ratelimit-policy"] == '"tollgate";q=2;w=86400'
    assert int(limited.headers["retry-after"]) > 0


def test_none_style_sends_no_rate_limit_header_but_retry_after_on_429(start_envoy, wasm) -> None:
    first, _, limited = three(start_envoy(plugin_config(catalogue(), rate_limit_headers="none")))
    assert first.status_code == 200 and limited.status_code == 429
    for response in (first, limited):
        assert not [h for h in response.headers if h.lower().startswith(("x-ratelimit", "ratelimit"))], response.headers
    assert int(limited.headers["retry-after"]) > 0


def test_default_style_is_x_ratelimit(start_envoy, wasm) -> None:
    first, _, _ = three(start_envoy(plugin_config(catalogue())))
    assert (first.headers["x-ratelimit-limit"], first.headers["x-ratelimit-remaining"]) == ("2", "1")
    assert "ratelimit" not in first.headers


def test_unknown_style_is_refused_naming_the_field(upstream, wasm) -> None:
    refusal = run_envoy_until_refused(envoy_bootstrap(upstream.port, plugin_config(catalogue(), rate_limit_headers="draft")))
    assert "rate_limit_headers" in refusal.log, refusal.log[-4000:]
