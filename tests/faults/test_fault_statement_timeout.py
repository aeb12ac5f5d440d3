"""PGPOOL_STATEMENT_TIMEOUT: the server cancels a statement that runs too long.

On a direct connection it is a startup option: every statement of every
transaction (and in autocommit) is bounded, for no round trip. PgBouncer does
not pass startup options on: refused, or accepted and dropped. Either way the
pool says so and what to do instead, and the server-side settings the docs
recommend work through PgBouncer in transaction mode.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from flask import Flask
from psycopg2.extensions import connection, make_dsn
from support.pgbouncer import PgBouncer, pgbouncer_binary

from flask_pgpool import PoolTimeout, get_db

needs_pgbouncer = pytest.mark.skipif(
    pgbouncer_binary() is None, reason="pgbouncer is not installed (Debian: apt-get install -y pgbouncer)"
)


def statement_app(make_app: Callable[..., Flask], **config: Any) -> Flask:
    """An app whose views sleep in a transaction or in autocommit, or show a setting."""
    config.setdefault("PGPOOL_MAXCONN", 1)
    config.setdefault("PGPOOL_TIMEOUT", 3)
    app = make_app(PROPAGATE_EXCEPTIONS=False, **config)

    @app.get("/sleep/<float:seconds>")
    def sleep(seconds: float) -> str:
        with get_db().cursor() as cur:
            cur.execute("SELECT pg_sleep(%s)", (seconds,))
        return "slept"

    @app.get("/sleep-autocommit/<float:seconds>")
    def sleep_autocommit(seconds: float) -> str:
        db = get_db()
        db.autocommit = True
        with db.cursor() as cur:
            cur.execute("SELECT pg_sleep(%s)", (seconds,))
        return "slept"

    @app.get("/show/<name>")
    def show(name: str) -> str:
        with get_db().cursor() as cur:
            cur.execute("SELECT current_setting(%s)", (name,))
            row = cur.fetchone()
        assert row is not None
        return str(row[0])

    @app.get("/pid")
    def pid() -> str:
        with get_db().cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            row = cur.fetchone()
        assert row is not None
        return str(row[0])

    return app


def stats_of(app: Flask) -> dict[str, int]:
    stats: dict[str, int] = app.extensions["pgpool"].get_stats(app=app)
    return stats


# -- a direct connection ------------------------------------------------------------


def test_a_slow_statement_is_cancelled_and_the_connection_kept(
    make_app: Callable[..., Flask], pg_server_dsn: str
) -> None:
    app = statement_app(make_app, PGPOOL_DSN=pg_server_dsn, PGPOOL_STATEMENT_TIMEOUT=0.2)
    client = app.test_client()
    pid = client.get("/pid").text
    assert client.get("/show/statement_timeout").text == "200ms"
    for url in ("/sleep/5.0", "/sleep-autocommit/5.0"):
        started = time.monotonic()
        response = client.get(url)
        assert response.status_code == 500, url  # QueryCanceled: the view's error, not a lost connection
        assert time.monotonic() - started < 3, url
    assert client.get("/sleep/0.05").status_code == 200
    # Cancelled, rolled back, reused: the same session all along.
    assert client.get("/pid").text == pid
    stats = stats_of(app)
    assert (stats["connections_num"], stats["returns_bad"]) == (1, 0)


def test_the_options_given_are_kept(make_app: Callable[..., Flask], pg_server_dsn: str, app_name: str) -> None:
    app = statement_app(
        make_app,
        PGPOOL_DSN=pg_server_dsn,
        PGPOOL_STATEMENT_TIMEOUT=1.5,
        PGPOOL_CONNECT_ARGS={"application_name": app_name, "options": "-c search_path=pg_catalog"},
    )
    client = app.test_client()
    assert client.get("/show/search_path").text == "pg_catalog"
    assert client.get("/show/statement_timeout").text == "1500ms"


def test_pgoptions_in_the_environment_is_kept(
    make_app: Callable[..., Flask], pg_server_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGOPTIONS", "-c search_path=pg_catalog")
    app = statement_app(make_app, PGPOOL_DSN=pg_server_dsn, PGPOOL_STATEMENT_TIMEOUT=2)
    client = app.test_client()
    assert client.get("/show/search_path").text == "pg_catalog"
    assert client.get("/show/statement_timeout").text == "2s"


@pytest.mark.parametrize(
    "given", ["-c statement_timeout=1234", "-c STATEMENT_TIMEOUT=1234", "--statement-timeout=1234"]
)
def test_a_statement_timeout_in_the_options_wins(
    make_app: Callable[..., Flask], pg_server_dsn: str, app_name: str, given: str
) -> None:
    # PostgreSQL takes a setting's name in any case.
    app = statement_app(make_app, PGPOOL_DSN=make_dsn(pg_server_dsn, options=given), PGPOOL_STATEMENT_TIMEOUT=0.2)
    assert app.test_client().get("/show/statement_timeout").text == "1234ms"


# -- through PgBouncer (transaction mode) -------------------------------------------


@pytest.fixture
def bouncer_for(pg_server_dsn: str, tmp_path: Path) -> Iterator[Callable[..., PgBouncer]]:
    """Start PgBouncers (transaction mode) in front of the test server; stopped after the test."""
    started: list[PgBouncer] = []

    def start(upstream: str | None = None, **settings: Any) -> PgBouncer:
        bouncer = PgBouncer.start(upstream or pg_server_dsn, tmp_path, default_pool_size=2, **settings)
        started.append(bouncer)
        return bouncer

    yield start
    for bouncer in started:
        bouncer.stop()


@needs_pgbouncer
@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ({}, "unsupported startup parameter"),
        ({"ignore_startup_parameters": "options"}, "the startup option was dropped"),
    ],
    ids=["refused", "ignored"],
)
def test_behind_pgbouncer_the_key_is_refused_with_what_to_do(
    make_app: Callable[..., Flask],
    bouncer_for: Callable[..., PgBouncer],
    caplog: pytest.LogCaptureFixture,
    settings: dict[str, Any],
    says: str,
) -> None:
    bouncer = bouncer_for(**settings)
    app = statement_app(make_app, PGPOOL_DSN=bouncer.dsn(), PGPOOL_STATEMENT_TIMEOUT=0.2, PGPOOL_TIMEOUT=1)
    with caplog.at_level(logging.WARNING, logger="flask_pgpool"):
        response = app.test_client().get("/sleep/5.0")
    # Never a statement that runs unbounded while the app believes it is bounded.
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    pool = app.extensions["pgpool"].get_pool(app=app)
    with pytest.raises(PoolTimeout) as info:
        pool.getconn(timeout=2)
    message = str(info.value)
    assert says in message
    assert "PGPOOL_STATEMENT_TIMEOUT" in message
    assert "ALTER ROLE" in message and "connect_query" in message
    assert "PGPOOL_STATEMENT_TIMEOUT" in caplog.text  # the 503 in the log says it too


def assert_bounded_through(app: Flask) -> None:
    client = app.test_client()
    pid = client.get("/pid")
    assert pid.status_code == 200
    started = time.monotonic()
    assert client.get("/sleep/5.0").status_code == 500  # cancelled by the server
    assert time.monotonic() - started < 3
    assert client.get("/sleep/0.05").status_code == 200
    stats = stats_of(app)
    # The client connection to PgBouncer was kept: a cancel is not a lost connection.
    assert (stats["connections_num"], stats["returns_bad"]) == (1, 0)


@needs_pgbouncer
def test_behind_pgbouncer_connect_query_bounds_statements(
    make_app: Callable[..., Flask], bouncer_for: Callable[..., PgBouncer]
) -> None:
    bouncer = bouncer_for(database_params={"connect_query": "SET statement_timeout = 200"})
    assert_bounded_through(statement_app(make_app, PGPOOL_DSN=bouncer.dsn()))


@needs_pgbouncer
def test_behind_pgbouncer_a_role_setting_bounds_statements(
    make_app: Callable[..., Flask], bouncer_for: Callable[..., PgBouncer], admin: connection, pg_server_dsn: str
) -> None:
    role = f"pgpool_st_{uuid.uuid4().hex[:10]}"
    with admin.cursor() as cur:
        try:
            cur.execute(f"CREATE ROLE {role} LOGIN")
        except psycopg2.errors.InsufficientPrivilege:
            pytest.skip("the test server's user may not create roles")
        cur.execute("SELECT current_database()")
        row = cur.fetchone()
        assert row is not None
        cur.execute(f'ALTER ROLE {role} IN DATABASE "{row[0]}" SET statement_timeout = 200')
    try:
        bouncer = bouncer_for(make_dsn(pg_server_dsn, user=role))
        assert_bounded_through(statement_app(make_app, PGPOOL_DSN=bouncer.dsn()))
        bouncer.stop()  # closes its server sessions, so that the role can go
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP ROLE IF EXISTS {role}")
