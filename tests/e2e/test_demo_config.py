"""envoy/static-demo.yaml, the configuration `make demo` runs, works as its comments say: the
ACME seed catalogue with Gold, Silver and Bronze clients and their demo keys."""

from typing import Any

import pytest
import requests
import yaml

from harness import REPO, WASM, Envoy, echoed

DEMO_CONFIG = REPO / "envoy" / "static-demo.yaml"


def demo_bootstrap(upstream_port: int) -> dict[str, Any]:
    """The demo configuration moved to free ports, the test upstream and the absolute .wasm path."""
    bootstrap = yaml.safe_load(DEMO_CONFIG.read_text())
    bootstrap["admin"]["address"]["socket_address"]["port_value"] = 0
    listener = bootstrap["static_resources"]["listeners"][0]
    listener["address"]["socket_address"]["port_value"] = 0
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    wasm = next(f for f in manager["http_filters"] if f["name"] == "envoy.filters.http.wasm")
    wasm["typed_config"]["config"]["vm_config"]["code"]["local"]["filename"] = str(WASM)
    cluster = bootstrap["static_resources"]["clusters"][0]
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    endpoint["address"]["socket_address"]["port_value"] = upstream_port
    return bootstrap


@pytest.fixture(scope="module")
def envoy(upstream, wasm, tmp_path_factory) -> Any:
    envoy = Envoy.start(demo_bootstrap(upstream.port), tmp_path_factory.mktemp("demo"))
    try:
        yield envoy
    finally:
        envoy.stop()


def test_demo_public_api_needs_no_key(envoy: Envoy) -> None:
    assert echoed(requests.get(f"{envoy.url}/status/v1/health", timeout=10))


def test_demo_private_api_needs_a_key(envoy: Envoy) -> None:
    assert requests.get(f"{envoy.url}/orders/v1/42", timeout=10).status_code == 401


@pytest.mark.parametrize(
    ("key", "client_id", "plan_id", "per_day"),
    [
        ("acme-gold-demo-key", "acme/mobile-app/1", "acme/gold/1", 10000),
        ("acme-silver-demo-key", "acme/partner-portal/1", "acme/silver/1", 1000),
        ("acme-bronze-demo-key", "acme/hobby-script/1", "acme/bronze/1", 100),
    ],
)
def test_demo_keys_reach_orders_through_their_plans(
    envoy: Envoy, key: str, client_id: str, plan_id: str, per_day: int
) -> None:
    response = requests.get(f"{envoy.url}/orders/v1/42", headers={"x-api-key": key}, timeout=10)
    body = echoed(response)
    assert body["headers"]["x-tollgate-client"] == client_id
    assert body["headers"]["x-tollgate-plan"] == plan_id
    assert response.headers["x-ratelimit-limit"] == str(per_day)
