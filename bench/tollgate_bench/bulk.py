"""Large catalogues for part 4 (and the replicas section), written straight into the control
plane's SQLite file or PostgreSQL database.

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

from . import postgres

KEY_PREFIX = "tg_bench"


def api_key(n: int) -> str:
    """The API key of bulk client `n`: 35 characters, like the control plane's `tg_` keys."""
    return f"{KEY_PREFIX}{n:027d}"


def client_id(n: int) -> str:
    return f"client-{n:07d}"


# The rows a client version with one key and one contract is made of, table by table in the
# order the foreign keys need, with the columns the store writes (ids and, on PostgreSQL, the
# key's bucket are the database's to fill).
TABLES = {
    "clients": ("org", "id", "name", "created_at"),
    "client_versions": ("org", "client", "version", "created_at"),
    "api_keys": ("org", "client", "version", "sha256", "created_at"),
    "contracts": ("client_org", "client", "client_version", "api_org", "api", "api_version", "plan_org", "plan", "plan_version", "created_at"),
}


def rows(table: str, org: str, api: str, plan: str, count: int, spare: int, now: int) -> Iterator[tuple[object, ...]]:
    for n in range(count if table == "contracts" else count + spare):
        c = client_id(n)
        if table == "clients":
            yield (org, c, c, now)
        elif table == "client_versions":
            yield (org, c, "1", now)
        elif table == "api_keys":
            yield (org, c, "1", hashlib.sha256(api_key(n).encode()).hexdigest(), now)
        else:
            yield (org, c, "1", org, api, "1", org, plan, "1", now)


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

        for table, columns in TABLES.items():
            marks = ", ".join("?" * len(columns))
            connection.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows(table, org, api, plan, count, spare, now))
        connection.execute("UPDATE gateway_revision SET revision = revision + 1 WHERE id = 1")
        connection.execute("COMMIT")
    finally:
        connection.close()
    return time.monotonic() - started


def insert_clients_postgres(cluster: postgres.Cluster, db: str, org: str, api: str, plan: str, count: int, spare: int = 0) -> float:
    """`insert_clients` into PostgreSQL database `db`: the same rows, in one transaction, by
    `COPY … FROM STDIN` through the server's psql, leaving what the schema's triggers and
    generated columns would: the database computes each key's bucket and checks every foreign
    key, and the buckets the rows touch are marked dirty. The two triggers that mark them, row
    by row, would take most of the time at a million rows (the contract's looks up its client
    version's keys); they are off for the COPY and the same buckets (every bulk key's; the
    org has no other keys) are marked in one statement instead, within the transaction. The
    control plane then finds the tables at a revision its stored buckets do not describe and
    builds them at its next open, as on SQLite. Returns the seconds it took."""
    started = time.monotonic()
    now = int(time.time())
    marking = {"api_keys": "api_keys_touched", "contracts": "contracts_touched"}

    def script() -> Iterator[str]:
        yield "BEGIN;\n"
        for table, trigger in marking.items():
            yield f"ALTER TABLE {table} DISABLE TRIGGER {trigger};\n"
        for table, columns in TABLES.items():
            yield f"COPY {table} ({', '.join(columns)}) FROM STDIN;\n"
            for row in rows(table, org, api, plan, count, spare, now):
                yield "\t".join(str(v) for v in row) + "\n"
            yield "\\.\n"
        yield f"INSERT INTO dirty_buckets (bucket) SELECT DISTINCT bucket FROM api_keys WHERE org = '{org}' ON CONFLICT DO NOTHING;\n"
        for table, trigger in marking.items():
            yield f"ALTER TABLE {table} ENABLE TRIGGER {trigger};\n"
        yield "UPDATE gateway_revision SET revision = revision + 1 WHERE id = 1;\nCOMMIT;\n"

    cluster.script(script(), db, timeout_s=3600)
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
