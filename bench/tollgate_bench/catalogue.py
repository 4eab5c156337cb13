"""tollgate static-mode plugin configurations for the bench (the snapshot schema of core/)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

API_ID = "acme/orders/1"
API_PREFIX = "/orders"
NEVER_BINDS = 10**12  # a limit no run comes near


@dataclass(frozen=True)
class Contract:
    """One client version with its key and a contract on the bench API through `plan_id`."""

    contract_id: int
    client_id: str
    key: str
    plan_id: str
    limits: tuple[tuple[int, str], ...]


def plugin_configuration(contracts: list[Contract]) -> str:
    plans: dict[str, dict[str, Any]] = {}
    for c in contracts:
        plans[c.plan_id] = {"id": c.plan_id, "limits": [{"requests": n, "per": per} for n, per in c.limits]}
    snapshot = {
        "schema": 1,
        "revision": 1,
        "plans": list(plans.values()),
        "apis": [
            {
                "id": API_ID,
                "status": "published",
                "public": False,
                "routing": {"path_prefix": API_PREFIX, "hosts": []},
                "forward_api_key": False,
            }
        ],
        "clients": [
            {"id": c.client_id, "keys": [{"sha256": hashlib.sha256(c.key.encode()).hexdigest()}]} for c in contracts
        ],
        "contracts": [
            {"id": c.contract_id, "client": c.client_id, "api": API_ID, "plan": c.plan_id} for c in contracts
        ],
    }
    return json.dumps({"snapshot": snapshot})
