"""A request whose connection breaks (the server or the network went away) answers
503 with Retry-After; the view may catch the driver's error itself; other
database errors reach the app's handlers as before."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import psycopg2
import pytest
from flask import Flask

from flask_pgpool import PgPool, get_db

# A server session that ends itself: what a restart, pg_terminate_backend or a
# dead network does to a request's connection, in one deterministic step.
KILL_OWN_SESSION = "SELECT pg_terminate_backend(pg_backend_pid())"

pytestmark = pytest.mark.no_pgbouncer  # ends the server session under the pool's connection


@pytest.fixture
def lost_app(make_app: Callable[..., Flask]) -> Flask:
    app = make_app(PGPOOL_MAXCONN=1, PROPAGATE_EXCEPTIONS=False)

    @app.get("/lose")
    def lose() -> str:
        with get_db().cursor() as cur:
            cur.execute(KILL_OWN_SESSION)
        return "not reached"

    @app.get("/catch")
    def catch() -> Any:
        db = get_db()
        try:
            with db.cursor() as cur:
                cur.execute(KILL_OWN_SESSION)
        except psycopg2.OperationalError as exc:
            return {"caught": type(exc).__name__, "closed": db.closed}, 200
        return "not reached"

    @app.get("/cancelled")
    def cancelled() -> str:
        with get_db().cursor() as cur:
            cur.execute("SET LOCAL statement_timeout = 50")
            cur.execute("SELECT pg_sleep(2)")
        return "not reached"

    @app.get("/lose-in-with")
    def lose_in_with() -> str:
        # psycopg2's ``with conn:`` rolls back on the way out: on the broken
        # connection that raises InterfaceError, which replaces the real error.
        with get_db() as conn, conn.cursor() as cur:
            cur.execute(KILL_OWN_SESSION)
        return "not reached"

    @app.get("/lose-then-use")
    def lose_then_use() -> str:
        db = get_db()
        with contextlib.suppress(psycopg2.OperationalError), db.cursor() as cur:
            cur.execute(KILL_OWN_SESSION)
        db.cursor()  # InterfaceError: connection already closed
        return "not reached"

    @app.get("/closed-by-view")
    def closed_by_view() -> str:
        db = get_db()
        db.close()
        db.cursor()  # InterfaceError on a connection the view closed itself: its own bug
        return "not reached"

    @app.get("/one")
    def one() -> str:
        with get_db().cursor() as cur:
            cur.execute("SELECT 1")
        return "1"

    return app


def test_a_connection_lost_during_a_request_answers_503(lost_app: Flask, caplog: pytest.LogCaptureFixture) -> None:
    client = lost_app.test_client()
    with caplog.at_level(logging.WARNING, logger="flask_pgpool"):
        response = client.get("/lose")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert "database is busy or unreachable" in response.get_data(as_text=True)
    assert "the connection to the database was lost" in caplog.text
    stats = lost_app.extensions["pgpool"].get_stats(app=lost_app)
    assert stats["returns_bad"] == 1  # given back broken, and discarded
    assert client.get("/one").status_code == 200  # the only slot works again


def test_a_connection_lost_answers_json_to_who_asks(lost_app: Flask) -> None:
    response = lost_app.test_client().get("/lose", headers={"Accept": "application/json"})
    assert response.status_code == 503
    assert response.json == {
        "error": "database_unavailable",
        "message": "The database is busy or unreachable. Please try again shortly.",
        "retry_after": 1,
    }
    assert response.headers["Retry-After"] == "1"


@pytest.mark.parametrize("path", ["/lose-in-with", "/lose-then-use"])
def test_a_lost_connection_reported_as_interface_error_answers_503(
    lost_app: Flask, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = lost_app.test_client()
    with caplog.at_level(logging.WARNING, logger="flask_pgpool"):
        response = client.get(path)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert "the connection to the database was lost: connection already closed" in caplog.text
    assert client.get("/one").status_code == 200


def test_a_connection_the_view_closed_is_its_own_error(lost_app: Flask) -> None:
    assert lost_app.test_client().get("/closed-by-view").status_code == 500


def test_a_view_may_catch_the_drivers_error(lost_app: Flask) -> None:
    response = lost_app.test_client().get("/catch")
    assert response.status_code == 200
    assert response.json is not None
    assert response.json["caught"] in ("OperationalError", "AdminShutdown")
    assert response.json["closed"] == 2  # broken: psycopg2 will not use it again


def test_other_operational_errors_are_not_turned_into_503(lost_app: Flask) -> None:
    # A cancelled statement is an OperationalError on a healthy connection: the view's error.
    response = lost_app.test_client().get("/cancelled")
    assert response.status_code == 500
    stats = lost_app.extensions["pgpool"].get_stats(app=lost_app)
    assert (stats["returns_bad"], stats["connections_num"]) == (0, 1)


def test_other_operational_errors_reach_the_apps_handlers(lost_app: Flask) -> None:
    @lost_app.errorhandler(psycopg2.Error)
    def database_error(error: psycopg2.Error) -> Any:
        return {"error": type(error).__name__}, 409

    client = lost_app.test_client()
    cancelled = client.get("/cancelled")
    assert (cancelled.status_code, cancelled.json) == (409, {"error": "QueryCanceled"})
    # A lost connection is still a 503: the pool's answer is more specific.
    assert client.get("/lose").status_code == 503


@pytest.mark.parametrize("registered", ["before", "after"])
def test_the_apps_own_operational_error_handler_wins(pg_dsn: str, app_name: str, registered: str) -> None:
    def mine(error: psycopg2.OperationalError) -> Any:
        return "mine", 502

    app = Flask("own_handler")
    app.config.update(PGPOOL_DSN=pg_dsn, PGPOOL_CONNECT_ARGS={"application_name": app_name})
    pgpool = PgPool()
    if registered == "before":
        app.register_error_handler(psycopg2.OperationalError, mine)
    pgpool.init_app(app)
    if registered == "after":
        app.register_error_handler(psycopg2.OperationalError, mine)

    @app.get("/lose")
    def lose() -> str:
        with get_db().cursor() as cur:
            cur.execute(KILL_OWN_SESSION)
        return "not reached"

    try:
        response = app.test_client().get("/lose")
        assert (response.status_code, response.get_data(as_text=True)) == (502, "mine")
    finally:
        pgpool.close(app)
