"""The suite's private PostgreSQL (tests/e2e/postgres.py): databases of their own, data kept
across a restart and a kill, the same port every time."""

from __future__ import annotations

import subprocess

import pytest

from postgres import Postgres


def test_databases_and_their_rows_survive_restart_and_kill(postgres: Postgres) -> None:
    first = postgres.create_database("harness_first")
    second = postgres.create_database("harness_second")
    assert first != second and first.startswith(f"postgres://tollgate@127.0.0.1:{postgres.port}/")
    postgres.psql("CREATE TABLE kept (n BIGINT); INSERT INTO kept VALUES (1)", db="harness_first")
    postgres.psql("CREATE TABLE kept (n BIGINT); INSERT INTO kept VALUES (2)", db="harness_second")
    port = postgres.port

    postgres.restart()
    assert postgres.port == port
    assert postgres.psql("SELECT n FROM kept", db="harness_first") == "1"
    assert postgres.psql("SELECT n FROM kept", db="harness_second") == "2"

    postgres.psql("INSERT INTO kept VALUES (3)", db="harness_first")
    postgres.kill()
    assert not postgres.ready()
    postgres.start()
    assert postgres.port == port
    assert postgres.psql("SELECT n FROM kept ORDER BY n", db="harness_first").split() == ["1", "3"]


def test_a_statement_that_fails_is_an_error(postgres: Postgres) -> None:
    with pytest.raises(subprocess.CalledProcessError):
        postgres.psql("SELECT * FROM no_such_table")
