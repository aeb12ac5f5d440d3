"""A connection kept past its request refuses to work instead of running on
a connection that is back in the pool, or already another request's.

The request's connection may be used by the request's own code, by threads
it starts while it runs, and by the generator of its streamed response; once
the request has ended, using it raises ``StaleConnectionError``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import psycopg2
import pytest
from flask import Flask
from psycopg2.extensions import connection
from psycopg2.extras import DictCursor, DictRow, LoggingConnection, RealDictCursor
from support.http import fetch_value

from flask_pgpool import StaleConnectionError, get_db

pytestmark = pytest.mark.user_configs


def stats(app: Flask) -> dict[str, int]:
    return app.extensions["pgpool"].get_stats(app=app)  # type: ignore[no-any-return]


def stash_app(make_app: Callable[..., Flask], table: str, **config: Any) -> Flask:
    """``/stash`` keeps its connection in a global; ``/stale`` writes through it later."""
    app = make_app(**{"PGPOOL_MAXCONN": 1, "PGPOOL_TIMEOUT": 5, **config})
    kept: list[connection] = []
    app.config["kept"] = kept

    @app.get("/stash")
    def stash() -> str:
        kept.append(get_db())
        return "kept"

    @app.post("/stale")
    def stale() -> str:
        with kept[-1].cursor() as cur:
            cur.execute(f"INSERT INTO {table} (note) VALUES ('through a stale reference')")
        return "written"

    @app.get("/count")
    def count() -> str:
        with get_db().cursor(cursor_factory=psycopg2.extensions.cursor) as cur:
            cur.execute(f"SELECT count(*) FROM {table}")
            return str(fetch_value(cur))

    return app


@pytest.fixture
def app_of(make_app: Callable[..., Flask], table: str) -> Callable[..., Flask]:
    return lambda **config: stash_app(make_app, table, **config)


def test_use_in_a_later_request_raises(app_of: Callable[..., Flask]) -> None:
    app = app_of()
    client = app.test_client()
    assert client.get("/stash").status_code == 200
    with pytest.raises(StaleConnectionError, match="its request ended") as raised:
        client.post("/stale")
    assert isinstance(raised.value, psycopg2.InterfaceError)  # like a closed connection
    assert "get_db()" in str(raised.value)
    # The pooled connection is intact and serves the next request.
    assert client.get("/count").text == "0"
    assert stats(app)["connections_num"] == 1


def test_use_outside_any_request_raises(app_of: Callable[..., Flask]) -> None:
    app = app_of()
    assert app.test_client().get("/stash").status_code == 200
    kept = app.config["kept"][-1]
    for use in (kept.cursor, kept.commit, kept.rollback):
        with pytest.raises(StaleConnectionError):
            use()
    with pytest.raises(StaleConnectionError), kept:
        pass


def test_stale_write_never_joins_another_requests_transaction(
    app_of: Callable[..., Flask], admin: connection, table: str
) -> None:
    app = app_of()

    holding = threading.Event()
    release = threading.Event()

    @app.post("/commit-later")
    def commit_later() -> str:
        db = get_db()  # maxconn=1: the connection the stale reference points to
        holding.set()
        assert release.wait(10)
        db.commit()
        return "committed"

    client = app.test_client()
    assert client.get("/stash").status_code == 200
    result: list[int] = []
    other = threading.Thread(target=lambda: result.append(app.test_client().post("/commit-later").status_code))
    other.start()
    try:
        assert holding.wait(10)
        with pytest.raises(StaleConnectionError, match="another"):
            client.post("/stale")
    finally:
        release.set()
        other.join(10)
    assert result == [200]
    with admin.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {table}")
        assert fetch_value(cur) == 0


def test_threads_of_the_request_may_use_its_connection(app_of: Callable[..., Flask]) -> None:
    app = app_of()

    @app.get("/threaded")
    def threaded() -> str:
        db = get_db()
        answers: list[Any] = []

        def work() -> None:
            with db.cursor() as cur:
                cur.execute("SELECT 42")
                answers.append(fetch_value(cur))

        worker = threading.Thread(target=work)
        worker.start()
        worker.join(10)
        return str(answers)

    assert app.test_client().get("/threaded").text == "[42]"


def test_a_nested_app_context_may_use_the_requests_connection(app_of: Callable[..., Flask]) -> None:
    app = app_of()

    @app.get("/nested")
    def nested() -> str:
        db = get_db()
        with app.app_context(), db.cursor() as cur:
            cur.execute("SELECT 7")
            return str(fetch_value(cur))

    assert app.test_client().get("/nested").text == "7"


def test_the_pool_itself_still_uses_the_connection(app_of: Callable[..., Flask]) -> None:
    # Direct checkouts, pings and the status command get the connection that a
    # request had, and may use it.
    app = app_of(PGPOOL_PING_AFTER=0)
    assert app.test_client().get("/stash").status_code == 200
    pool = app.extensions["pgpool"].get_pool(app=app)
    pool.check()
    direct = pool.getconn()
    assert direct is app.config["kept"][-1]
    with direct.cursor() as cur:
        cur.execute("SELECT 1")
    direct.commit()
    pool.putconn(direct)
    result = app.test_cli_runner().invoke(args=["pgpool-status"])
    assert result.exit_code == 0, result.output
    s = stats(app)
    assert (s["connections_num"], s["connections_lost"], s["returns_bad"]) == (1, 0, 0)


# -- users' own connection and cursor classes ---------------------------------------


def test_with_a_logging_connection(
    app_of: Callable[..., Flask], app_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    logger = logging.getLogger("test_stale_use.sql")
    app = app_of(
        # No cursor_factory: LoggingConnection logs through its own cursor class.
        PGPOOL_CONNECT_ARGS={
            "application_name": app_name,
            "connection_factory": LoggingConnection,
            "cursor_factory": None,
        },
        PGPOOL_CONFIGURE=lambda conn: conn.initialize(logger),
    )

    @app.get("/kind")
    def kind() -> str:
        db = get_db()
        with db.cursor() as cur:
            cur.execute("SELECT 'logged'")
            return f"{isinstance(db, LoggingConnection)} {fetch_value(cur)}"

    client = app.test_client()
    with caplog.at_level(logging.DEBUG, logger=logger.name):
        assert client.get("/kind").text == "True logged"
    assert "SELECT 'logged'" in caplog.text
    assert client.get("/stash").status_code == 200
    with pytest.raises(StaleConnectionError):
        client.post("/stale")


class AppConnection(psycopg2.extensions.connection):
    """A connection class of the app's own."""


def test_with_connect_args_from_a_function(app_of: Callable[..., Flask], app_name: str) -> None:
    # Rotating credentials: the function is called for every new connection.
    def connect_args() -> dict[str, Any]:
        return {"application_name": app_name, "connection_factory": AppConnection}

    def use_function(app: Flask) -> None:
        app.config["PGPOOL_CONNECT_ARGS"] = connect_args

    app = app_of(before_init=use_function)

    @app.get("/kind")
    def kind() -> str:
        return str(isinstance(get_db(), AppConnection))

    client = app.test_client()
    assert client.get("/kind").text == "True"
    assert client.get("/stash").status_code == 200
    with pytest.raises(StaleConnectionError):
        client.post("/stale")


@pytest.mark.parametrize("factory", [DictCursor, RealDictCursor])
def test_with_a_cursor_factory(app_of: Callable[..., Flask], app_name: str, factory: type) -> None:
    app = app_of(PGPOOL_CONNECT_ARGS={"application_name": app_name, "cursor_factory": factory})

    @app.get("/row")
    def row() -> dict[str, Any]:
        with get_db().cursor() as cur:
            cur.execute("SELECT 1 AS one")
            found = cur.fetchone()
        assert isinstance(found, (DictRow, dict))
        return {"one": found["one"]}

    client = app.test_client()
    assert client.get("/row").json == {"one": 1}
    assert client.get("/stash").status_code == 200
    with pytest.raises(StaleConnectionError):
        client.post("/stale")
    assert client.get("/count").text == "0"


def test_with_a_cursor_factory_per_call(app_of: Callable[..., Flask]) -> None:
    app = app_of()

    @app.get("/row")
    def row() -> dict[str, Any]:
        with get_db().cursor(cursor_factory=RealDictCursor) as cur:
            cur.execute("SELECT 1 AS one")
            return dict(cur.fetchone() or {})

    assert app.test_client().get("/row").json == {"one": 1}

