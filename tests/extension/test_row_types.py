"""Apps that choose their rows or connections: the package's own queries keep working.

``PGPOOL_CONNECT_ARGS = {"cursor_factory": RealDictCursor}`` and friends change
what the app's cursors return; ``connection_factory`` changes the connection
class. ``flask pgpool-status`` and the test helpers must not care.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import psycopg2.extras
import pytest
from flask import Flask
from psycopg2.extensions import connection

from flask_pgpool import get_db
from flask_pgpool.testing import rolled_back


def initialise_logging(conn: connection) -> None:
    if isinstance(conn, psycopg2.extras.LoggingConnection):
        conn.initialize(logging.getLogger("tests.sql"))


# name: extra config of the app
USER_CONFIGS: dict[str, dict[str, Any]] = {
    "DictCursor": {"cursor_factory": psycopg2.extras.DictCursor},
    "RealDictCursor": {"cursor_factory": psycopg2.extras.RealDictCursor},
    "NamedTupleCursor": {"cursor_factory": psycopg2.extras.NamedTupleCursor},
    "LoggingConnection": {"connection_factory": psycopg2.extras.LoggingConnection},
}


@pytest.fixture(params=list(USER_CONFIGS))
def factory_app(request: pytest.FixtureRequest, make_app: Callable[..., Flask], app_name: str) -> Callable[..., Flask]:
    def make(**config: Any) -> Flask:
        return make_app(
            PGPOOL_CONNECT_ARGS={"application_name": app_name, **USER_CONFIGS[request.param]},
            PGPOOL_CONFIGURE=initialise_logging,
            **config,
        )

    return make


def test_status_reports_a_server_that_answers(factory_app: Callable[..., Flask]) -> None:
    app = factory_app(PGPOOL_MAXCONN=3)
    result = app.test_cli_runner().invoke(args=["pgpool-status"])
    assert result.exit_code == 0, result.output
    assert "UNREACHABLE" not in result.output
    assert "capacity    up to 3 connections per process; server max_connections" in result.output
    report = json.loads(app.test_cli_runner().invoke(args=["pgpool-status", "--json"]).output)
    default = report["pools"]["default"]
    assert default["reachable"] is True
    assert default["server_max_connections"] > 0
    assert default["server_sessions"] >= 1
    # The command's connection went back to the pool, healthy.
    assert default["stats"]["connections_lost"] == default["stats"]["returns_bad"] == 0


@pytest.mark.parametrize("configure", [True, False], ids=["configured", "not-configured"])
def test_rolled_back_works_with_the_apps_factories(
    make_app: Callable[..., Flask], app_name: str, admin: connection, table: str, configure: bool
) -> None:
    """The test helper's savepoints are its own queries: they need nothing of the app's setup."""
    app = make_app(
        PGPOOL_CONNECT_ARGS={"application_name": app_name, "connection_factory": psycopg2.extras.LoggingConnection},
        PGPOOL_CONFIGURE=initialise_logging if configure else None,
    )

    @app.post("/add")
    def add() -> str:
        conn = get_db()
        if not hasattr(conn, "_logobj"):  # the app sets it up on first use
            initialise_logging(conn)
        with conn.cursor() as cur:
            cur.execute(f"INSERT INTO {table} (note) VALUES ('x')")
        conn.commit()
        return "ok"

    with rolled_back(app) as conn:
        assert app.test_client().post("/add").status_code == 200
        with admin.cursor() as cur:
            cur.execute(f"SELECT count(*) FROM {table}")
            assert cur.fetchone() == (0,)  # the test's commit is a savepoint
        assert not conn.closed
    with admin.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {table}")
        assert cur.fetchone() == (0,)


def by_name(row: Any, column: str) -> Any:
    """A column of a row by its name: a key of dict-like rows, an attribute of named tuples."""
    return getattr(row, column) if isinstance(row, tuple) else row[column]


@pytest.mark.parametrize("cursor_factory", ["DictCursor", "RealDictCursor", "NamedTupleCursor"])
def test_rolled_back_with_a_cursor_factory(
    make_app: Callable[..., Flask], app_name: str, admin: connection, table: str, cursor_factory: str
) -> None:
    app = make_app(PGPOOL_CONNECT_ARGS={"application_name": app_name, **USER_CONFIGS[cursor_factory]})
    with rolled_back(app) as conn, app.app_context():
        db = get_db()
        assert db is conn
        with db, db.cursor() as cur:
            cur.execute(f"INSERT INTO {table} (note) VALUES ('x') RETURNING note")
            row = cur.fetchone()
        assert row is not None and by_name(row, "note") == "x"
        db.rollback()
        with db.cursor() as cur:
            cur.execute(f"SELECT count(*) AS n FROM {table}")
            row = cur.fetchone()
        assert row is not None and by_name(row, "n") == 1
    with admin.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {table}")
        assert cur.fetchone() == (0,)
