"""Large catalogues for part 4, written straight into the control plane's SQLite file.

Creating a million clients and contracts one HTTP call at a time would take hours here (each
write commits durably and re-renders the snapshot; see the scale section for the measured
rate). So the bench creates the org, plan and API through the real HTTP API, stops the control
plane, and inserts client versions, their keys and their contracts in one transaction with the
rows exactly as the control plane's own store writes them (control-plane/src/store/clients.rs,
contracts.rs; schema.sql), bumping the revision as a committed change does. The real
`tollgate serve` then opens that file, renders, paginates and signs the snapshot, and serves it
to real Envoys: everything measured runs the product's own code.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from pathlib import Path
from typing import Iterator

KEY_PREFIX = "tg_bench"


def api_key(n: int) -> str:
    """The API key of bulk client `n`: 35 characters, like the control plane's `tg_` keys."""
    return f"{KEY_PREFIX}{n:027d}"


def client_id(n: int) -> str:
    return f"client-{n:07d}"


def insert_clients(database: Path, org: str, api: str, plan: str, count: int, spare: int = 0) -> float:
    """Adds `count` client versions (`<org>/client-NNNNNNN/1`), each with one key and one
    contract on `<org>/<api>/1` through `<org>/<plan>/1`, then `spare` more (numbered from
    `count`) with a key but no contract yet: the bench gives them contracts later, as the
    changes it times. Bumps the gateway revision. Returns the seconds it took."""
    started = time.monotonic()
    now = int(time.time())
    connection = sqlite3.connect(database, isolation_level=None)
    try:
        connection.execute("PRAGMA foreign_keys = ON")
        connection.execute("BEGIN IMMEDIATE")

        def rows(shape: str) -> Iterator[tuple[object, ...]]:
            for n in range(count if shape == "contract" else count + spare):
                c = client_id(n)
                if shape == "client":
                    yield (org, c, c, now)
                elif shape == "version":
                    yield (org, c, "1", now)
                elif shape == "key":
                    yield (org, c, "1", hashlib.sha256(api_key(n).encode()).hexdigest(), now)
                else:
                    yield (org, c, "1", org, api, "1", org, plan, "1", now)

        connection.executemany("INSERT INTO clients (org, id, name, created_at) VALUES (?, ?, ?, ?)", rows("client"))
        connection.executemany("INSERT INTO client_versions (org, client, version, created_at) VALUES (?, ?, ?, ?)", rows("version"))
        connection.executemany("INSERT INTO api_keys (org, client, version, sha256, created_at) VALUES (?, ?, ?, ?, ?)", rows("key"))
        connection.executemany(
            "INSERT INTO contracts (client_org, client, client_version, api_org, api, api_version,"
            " plan_org, plan, plan_version, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows("contract"),
        )
        connection.execute("UPDATE gateway_revision SET revision = revision + 1 WHERE id = 1")
        connection.execute("COMMIT")
    finally:
        connection.close()
    return time.monotonic() - started


def insert_contract(database: Path, org: str, api: str, plan: str, n: int) -> None:
    """A contract for bulk client `n` on `<org>/<api>/1` through `<org>/<plan>/1`, written
    while the control plane is stopped, and the gateway revision bumped, as a committed change
    does: the control plane reopens at a revision it never served, so it has no older one to
    cut a delta from."""
    connection = sqlite3.connect(database, isolation_level=None)
    try:
        connection.execute("PRAGMA foreign_keys = ON")
        connection.execute("BEGIN IMMEDIATE")
        connection.execute(
            "INSERT INTO contracts (client_org, client, client_version, api_org, api, api_version,"
            " plan_org, plan, plan_version, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (org, client_id(n), "1", org, api, "1", org, plan, "1", int(time.time())),
        )
        connection.execute("UPDATE gateway_revision SET revision = revision + 1 WHERE id = 1")
        connection.execute("COMMIT")
    finally:
        connection.close()
