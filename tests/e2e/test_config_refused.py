"""A bad plugin configuration is refused when Envoy loads it (Envoy does not serve with it),
and Envoy's log names what is wrong."""

import json

import pytest

from harness import Catalogue, api, client, envoy_bootstrap, limit, plan, plugin_config, run_envoy_until_refused


def good_snapshot() -> dict:
    catalogue = Catalogue(
        plans=[plan("acme/gold/1", limit(10000, "day"))],
        apis=[api("acme/orders/1", "/orders/v1")],
        clients=[client("acme/mobile/1", "config-key")],
    ).contract("acme/mobile/1", "acme/orders/1", "acme/gold/1")
    return catalogue.snapshot()


def refused_with(upstream, plugin, *needles: str) -> None:
    refusal = run_envoy_until_refused(envoy_bootstrap(upstream.port, plugin))
    for needle in needles:
        assert needle in refusal.log, f"{needle!r} not in the envoy log:\n{refusal.log[-4000:]}"


def test_good_configuration_is_accepted(start_envoy, wasm) -> None:
    # The baseline for the refusals below: the same bootstrap with a good snapshot serves.
    assert start_envoy(plugin_config(good_snapshot())).port > 0


def test_unknown_top_level_field_is_refused(upstream, wasm) -> None:
    refused_with(upstream, json.dumps({**plugin_config(good_snapshot()), "foo": 1}), "foo")


def test_bad_limit_period_is_refused_naming_the_field(upstream, wasm) -> None:
    snapshot = good_snapshot()
    snapshot["plans"][0]["limits"] = [{"requests": 10, "per": "fortnight"}]
    refused_with(upstream, plugin_config(snapshot), "snapshot.plans[0].limits")


def test_unknown_field_inside_the_snapshot_is_refused(upstream, wasm) -> None:
    snapshot = good_snapshot()
    snapshot["apis"][0]["colour"] = "blue"
    refused_with(upstream, plugin_config(snapshot), "colour")


def test_bad_unmatched_value_is_refused(upstream, wasm) -> None:
    refused_with(upstream, plugin_config(good_snapshot(), unmatched="maybe"), "unmatched")


def test_unknown_schema_version_is_refused(upstream, wasm) -> None:
    snapshot = good_snapshot()
    snapshot["schema"] = 99
    refused_with(upstream, plugin_config(snapshot), "schema")


def test_contract_with_an_unknown_plan_is_refused(upstream, wasm) -> None:
    snapshot = good_snapshot()
    snapshot["contracts"][0]["plan"] = "acme/platinum/1"
    refused_with(upstream, plugin_config(snapshot), "snapshot.contracts[0].plan", "acme/platinum/1")


def test_key_hash_that_is_not_sha256_hex_is_refused(upstream, wasm) -> None:
    snapshot = good_snapshot()
    snapshot["clients"][0]["keys"][0]["sha256"] = "not-a-hash"
    refused_with(upstream, plugin_config(snapshot), "snapshot.clients[0].keys[0].sha256")


@pytest.mark.parametrize("text", ["not json", "{\"snapshot\": "], ids=["not-json", "truncated"])
def test_configuration_that_is_not_json_is_refused(upstream, wasm, text: str) -> None:
    refused_with(upstream, text)
