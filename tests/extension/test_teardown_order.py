"""get_db() in the app's own teardown code: never a connection that nothing gives back.

Flask runs teardown functions in reverse order of registration, then sends
``appcontext_tearing_down``. A teardown function may use the request's
connection whenever it was registered; a signal receiver that runs after the
connection went back gets a clear error instead of a connection of its own.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, appcontext_tearing_down, request_tearing_down
from psycopg2.extensions import connection
from support.http import fetch_value

from flask_pgpool import PgPool, get_db


def stats(app: Flask) -> dict[str, int]:
    return app.extensions["pgpool"].get_stats(app=app)  # type: ignore[no-any-return]


def all_idle(app: Flask) -> bool:
    s = stats(app)
    return bool(s["pool_size"] == s["pool_available"])


@pytest.fixture
def new_app(pg_dsn: str, app_name: str, tmp_path: Path) -> Iterator[Callable[[], Flask]]:
    """An app with PgPool not set up yet, so that the test registers its hooks first."""
    made: list[Flask] = []

    def make() -> Flask:
        app = Flask(f"teardown_order_{len(made)}", instance_path=str(tmp_path))
        app.config.update(
            TESTING=True,
            PGPOOL_DSN=pg_dsn,
            PGPOOL_MAXCONN=2,
            PGPOOL_TIMEOUT=1,
            PGPOOL_CONNECT_ARGS={"application_name": app_name},
        )

        @app.get("/db")
        def db() -> str:
            with get_db().cursor() as cur:
                cur.execute("SELECT 1")
            return "ok"

        @app.get("/nodb")
        def nodb() -> str:
            return "ok"

        made.append(app)
        return app

    yield make
    for app in made:
        if "pgpool" in app.extensions:
            app.extensions["pgpool"].close(app)


@pytest.mark.parametrize("path", ["/db", "/nodb"])
def test_teardown_registered_before_init_app_uses_the_requests_connection(
    new_app: Callable[[], Flask], admin: connection, table: str, path: str
) -> None:
    app = new_app()
    seen: list[int] = []

    @app.teardown_appcontext
    def audit(exc: BaseException | None) -> None:
        db = get_db()
        with db.cursor() as cur:
            cur.execute(f"INSERT INTO {table} (note) VALUES ('audit')")
            cur.execute("SELECT pg_backend_pid()")
            seen.append(int(fetch_value(cur)))
        db.commit()

    PgPool(app)
    client = app.test_client()
    # More requests than the pool has connections (maxconn=2).
    for _ in range(4):
        assert client.get(path).status_code == 200
        assert all_idle(app)
    assert stats(app)["pool_size"] == 1
    assert len(set(seen)) == 1
    with admin.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {table}")
        assert fetch_value(cur) == 4


def test_teardown_registered_after_init_app_still_sees_the_uncommitted_work(
    new_app: Callable[[], Flask], admin: connection, table: str
) -> None:
    # The "commit when the request ends" pattern.
    app = new_app()
    PgPool(app)

    @app.post("/note")
    def note() -> str:
        with get_db().cursor() as cur:
            cur.execute(f"INSERT INTO {table} (note) VALUES ('committed at teardown')")
        return "ok"

    @app.teardown_appcontext
    def commit(exc: BaseException | None) -> None:
        if exc is None:
            get_db().commit()

    assert app.test_client().post("/note").status_code == 200
    assert all_idle(app)
    with admin.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {table}")
        assert fetch_value(cur) == 1


@pytest.mark.parametrize("path", ["/db", "/nodb"])
def test_get_db_in_an_appcontext_tearing_down_receiver_is_refused(new_app: Callable[[], Flask], path: str) -> None:
    app = new_app()
    PgPool(app)
    errors: list[BaseException] = []

    def receiver(sender: Flask, **extra: Any) -> None:
        try:
            get_db()
        except RuntimeError as exc:
            errors.append(exc)
            raise

    appcontext_tearing_down.connect(receiver, app)
    client = app.test_client()
    for _ in range(4):
        with pytest.raises(RuntimeError, match="appcontext_tearing_down"):
            client.get(path)
        assert all_idle(app)
    assert len(errors) == 4
    assert "teardown_appcontext" in str(errors[0])  # what to use instead
    appcontext_tearing_down.disconnect(receiver, app)
    assert client.get("/db").status_code == 200


def test_get_db_in_a_request_tearing_down_receiver_uses_the_requests_connection(
    new_app: Callable[[], Flask],
) -> None:
    app = new_app()
    PgPool(app)
    seen: list[bool] = []

    def receiver(sender: Flask, **extra: Any) -> None:
        with get_db().cursor() as cur:
            cur.execute("SELECT 1")
            seen.append(fetch_value(cur) == 1)

    request_tearing_down.connect(receiver, app)
    client = app.test_client()
    for _ in range(4):
        assert client.get("/db").status_code == 200
        assert all_idle(app)
    assert seen == [True] * 4
    request_tearing_down.disconnect(receiver, app)


def test_request_tearing_down_receiver_inside_a_context_the_test_holds(new_app: Callable[[], Flask]) -> None:
    # The requests borrow the test's app context: the receiver, which runs after
    # the request gave its connection back, gets the app context's, as it would
    # in production, and that one goes back when the test's context ends.
    app = new_app()
    PgPool(app)

    def receiver(sender: Flask, **extra: Any) -> None:
        with get_db().cursor() as cur:
            cur.execute("SELECT 1")

    request_tearing_down.connect(receiver, app)
    client = app.test_client()
    with app.app_context():
        for _ in range(4):
            assert client.get("/db").status_code == 200
        s = stats(app)
        assert s["pool_size"] - s["pool_available"] == 1
    assert all_idle(app)
    request_tearing_down.disconnect(receiver, app)


def test_teardown_request_using_get_db_in_requests_inside_a_context_the_test_holds(
    new_app: Callable[[], Flask],
) -> None:
    app = new_app()
    PgPool(app)
    seen: list[int] = []

    @app.teardown_request
    def uses_the_database(exc: BaseException | None) -> None:
        with get_db().cursor() as cur:
            cur.execute("SELECT 1")
            seen.append(fetch_value(cur))

    client = app.test_client()
    with app.app_context():
        for _ in range(4):  # more than maxconn=2
            assert client.get("/nodb").status_code == 200
            gc.collect()
            assert all_idle(app)
    assert seen == [1] * 4


def test_a_teardown_function_that_raises_does_not_lose_the_connection(
    new_app: Callable[[], Flask], caplog: pytest.LogCaptureFixture
) -> None:
    # Before Flask 3.2, a teardown function that raises stops Flask from running
    # the others, flask-pgpool's included: the connection goes back when the
    # request's app context is freed.
    app = new_app()
    PgPool(app)

    @app.teardown_appcontext
    def broken(exc: BaseException | None) -> None:
        raise RuntimeError("teardown failed")

    client = app.test_client()
    for _ in range(3):  # more than maxconn=2
        with pytest.raises(RuntimeError, match="teardown failed"):
            client.get("/db")
        gc.collect()
        assert all_idle(app)
    assert stats(app)["requests_errors"] == 0


def test_an_app_context_pushed_again_gets_a_connection_again(new_app: Callable[[], Flask]) -> None:
    app = new_app()
    PgPool(app)
    ctx = app.app_context()
    for _ in range(3):
        with ctx, get_db().cursor() as cur:
            cur.execute("SELECT 1")
        assert all_idle(app)


def test_a_raising_teardown_request_in_a_context_the_test_holds_leaves_no_unraisable_error(
    new_app: Callable[[], Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The request borrows the test's app context; its lease ends when the
    # request context is freed. The weak reference to the app context must
    # not fail in its callback when that context is freed later.
    app = new_app()
    PgPool(app)

    @app.teardown_request
    def broken(exc: BaseException | None) -> None:
        raise ValueError("teardown failed")

    unraisable: list[str] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda hook: unraisable.append(repr(hook.exc_value)))
    for _ in range(4):  # more than maxconn=2
        with app.app_context(), pytest.raises(ValueError, match="teardown failed"):
            app.test_client().get("/db")
        gc.collect()
        assert all_idle(app)
    assert unraisable == []
