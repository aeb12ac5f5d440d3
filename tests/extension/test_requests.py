"""One pooled connection per request, always given back.

Every test here builds its app with ``make_app`` and uses a plain
``app.test_client()`` (never pytest-flask's ``client``, which keeps one app
context for the whole test), so that teardown runs after each request the way
it does in production. The module runs under each user configuration of
``PGPOOL_TEST_MATRIX`` (cursor and connection factories, autocommit, binds
with their own login): see support.userconfigs.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg2
import pytest
from flask import Blueprint, Flask, abort
from psycopg2.extensions import connection
from support.http import fetch_value
from support.userconfigs import UserConfig

from flask_pgpool import PgPool, get_db

pytestmark = pytest.mark.user_configs

Sessions = Callable[..., list[tuple[Any, ...]]]


def stats(app: Flask) -> dict[str, int]:
    return app.extensions["pgpool"].get_stats(app=app)  # type: ignore[no-any-return]


def wait_for_states(server_sessions: Sessions, expected: list[str], timeout: float = 5.0) -> list[str]:
    """The states of the test's server sessions, once they match ``expected``.

    A backend reports 'idle' just after it answers, so the state is polled
    briefly rather than read once.
    """
    deadline = time.monotonic() + timeout
    while True:
        states = sorted(state for _pid, state in server_sessions())
        if states == sorted(expected) or time.monotonic() > deadline:
            return states
        time.sleep(0.02)


def count_rows(admin: connection, table: str) -> int:
    with admin.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {table}")
        row = cur.fetchone()
    assert row is not None
    return int(row[0])


def insert(note: str, table: str) -> None:
    with get_db().cursor() as cur:
        cur.execute(f"INSERT INTO {table} (note) VALUES (%s)", (note,))


def backend_pid() -> int:
    with get_db().cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        return int(fetch_value(cur))


def left_behind(writes: int, user_config: UserConfig) -> int:
    """Rows that uncommitted writes leave: none, unless every statement commits (autocommit)."""
    return writes if user_config.autocommit else 0


def nothing_checked_out(app: Flask, timeout: float = 5.0) -> bool:
    """Whether every open connection is idle, once a replacement being opened for minconn is done."""
    deadline = time.monotonic() + timeout
    while True:
        s = stats(app)
        if s["pool_size"] == s["pool_available"] or time.monotonic() > deadline:
            return s["pool_size"] == s["pool_available"]
        time.sleep(0.02)


def assert_given_back(app: Flask, server_sessions: Sessions) -> None:
    """The request's connection is idle in the pool and idle on the server."""
    s = stats(app)
    assert s["pool_size"] == 1
    assert s["pool_available"] == 1
    assert wait_for_states(server_sessions, ["idle"]) == ["idle"]


# -- no connection before it is needed ----------------------------------------


def test_init_app_opens_no_connection(make_app: Callable[..., Flask], server_sessions: Sessions) -> None:
    app = make_app()
    assert server_sessions() == []
    assert stats(app)["pool_size"] == 0
    assert stats(app)["connections_num"] == 0


def test_view_without_get_db_costs_the_pool_nothing(make_app: Callable[..., Flask], server_sessions: Sessions) -> None:
    app = make_app()

    @app.get("/hello")
    def hello() -> str:
        return "hello"

    assert app.test_client().get("/hello").text == "hello"
    assert server_sessions() == []
    s = stats(app)
    assert (s["pool_size"], s["requests_num"], s["connections_num"]) == (0, 0, 0)


# -- one connection per app context -------------------------------------------


def test_get_db_returns_the_same_connection_within_a_context(make_app: Callable[..., Flask]) -> None:
    ext = PgPool()
    app = make_app(ext)
    with app.app_context():
        first = get_db()
        assert get_db() is first
        assert ext.get_db() is first
        assert stats(app)["requests_num"] == 1
        assert stats(app)["pool_size"] == 1


def test_threads_sharing_the_app_context_check_out_one_connection(make_app: Callable[..., Flask]) -> None:
    # Threads started with the request's context (contextvars.copy_context(),
    # as asyncio.to_thread does) may make the request's first get_db() at the
    # same moment: they all get the request's one connection, and none is
    # left checked out when the request ends.
    app = make_app()
    threads = 4

    @app.get("/threads")
    def threaded() -> dict[str, int]:
        barrier = threading.Barrier(threads)
        seen: list[int] = []

        def work() -> None:
            barrier.wait(timeout=10)
            seen.append(id(get_db()))

        runners = [threading.Thread(target=contextvars.copy_context().run, args=(work,)) for _ in range(threads)]
        for runner in runners:
            runner.start()
        for runner in runners:
            runner.join()
        return {"connections": len(set(seen)), "calls": len(seen)}

    client = app.test_client()
    for _ in range(5):
        assert client.get("/threads").json == {"connections": 1, "calls": threads}
        assert nothing_checked_out(app)


def test_second_request_reuses_the_pooled_connection(make_app: Callable[..., Flask], server_sessions: Sessions) -> None:
    app = make_app()

    @app.get("/pid")
    def pid() -> dict[str, int]:
        return {"pid": backend_pid()}

    client = app.test_client()
    first = client.get("/pid").json
    second = client.get("/pid").json
    assert first == second
    s = stats(app)
    assert s["requests_num"] == 2
    assert s["connections_num"] == 1
    assert len(server_sessions()) == 1


# -- given back whatever the view does ----------------------------------------


def test_given_back_after_success(make_app: Callable[..., Flask], server_sessions: Sessions, table: str) -> None:
    app = make_app()

    @app.get("/ok")
    def ok() -> str:
        insert("left uncommitted", table)
        return "ok"

    client = app.test_client()
    for _ in range(3):
        assert client.get("/ok").status_code == 200
        assert_given_back(app, server_sessions)
    assert stats(app)["connections_num"] == 1


def test_given_back_after_an_exception(
    make_app: Callable[..., Flask], server_sessions: Sessions, admin: connection, table: str, user_config: UserConfig
) -> None:
    app = make_app(PROPAGATE_EXCEPTIONS=False)

    @app.get("/boom")
    def boom() -> str:
        insert("written before the crash", table)
        raise ValueError("the view failed")

    client = app.test_client()
    for _ in range(2):
        assert client.get("/boom").status_code == 500
        assert_given_back(app, server_sessions)
    assert count_rows(admin, table) == left_behind(2, user_config)
    assert stats(app)["connections_num"] == 1


def test_given_back_after_an_exception_that_propagates(
    make_app: Callable[..., Flask], server_sessions: Sessions, admin: connection, table: str, user_config: UserConfig
) -> None:
    # TESTING=True re-raises the view's exception out of the client; teardown still runs.
    app = make_app()

    @app.get("/boom")
    def boom() -> str:
        insert("written before the crash", table)
        raise ValueError("the view failed")

    with pytest.raises(ValueError, match="the view failed"):
        app.test_client().get("/boom")
    assert_given_back(app, server_sessions)
    assert count_rows(admin, table) == left_behind(1, user_config)


def test_given_back_after_abort(
    make_app: Callable[..., Flask], server_sessions: Sessions, admin: connection, table: str, user_config: UserConfig
) -> None:
    app = make_app()

    @app.get("/missing")
    def missing() -> str:
        insert("written before abort", table)
        abort(404)

    client = app.test_client()
    for _ in range(2):
        assert client.get("/missing").status_code == 404
        assert_given_back(app, server_sessions)
    # Teardown sees exc=None after abort(): the write must still be rolled back.
    assert count_rows(admin, table) == left_behind(2, user_config)


def test_given_back_after_an_sql_error(make_app: Callable[..., Flask], server_sessions: Sessions) -> None:
    app = make_app(PROPAGATE_EXCEPTIONS=False)

    @app.get("/bad-sql")
    def bad_sql() -> str:
        with get_db().cursor() as cur:
            cur.execute("SELECT 1 / 0")
        return "unreachable"

    @app.get("/pid")
    def pid() -> dict[str, int]:
        return {"pid": backend_pid()}

    client = app.test_client()
    assert client.get("/bad-sql").status_code == 500
    assert_given_back(app, server_sessions)
    # The aborted transaction was rolled back: the same connection serves the next request.
    assert client.get("/pid").status_code == 200
    s = stats(app)
    assert (s["connections_num"], s["returns_bad"]) == (1, 0)


def test_given_back_after_a_handled_sql_error(
    make_app: Callable[..., Flask], server_sessions: Sessions, admin: connection, table: str, user_config: UserConfig
) -> None:
    app = make_app()

    @app.get("/handled")
    def handled() -> tuple[str, int]:
        insert("before the error", table)
        try:
            with get_db().cursor() as cur:
                cur.execute("SELECT no_such_column FROM pg_class")
        except psycopg2.errors.UndefinedColumn:
            return "handled", 400
        return "unreachable", 200

    assert app.test_client().get("/handled").status_code == 400
    assert_given_back(app, server_sessions)
    assert count_rows(admin, table) == left_behind(1, user_config)


# -- commit is explicit -------------------------------------------------------


def test_commit_with_the_connection_as_context_manager(
    make_app: Callable[..., Flask], admin: connection, table: str
) -> None:
    app = make_app()

    @app.post("/notes")
    def add() -> str:
        with get_db() as conn, conn.cursor() as cur:
            cur.execute(f"INSERT INTO {table} (note) VALUES ('kept')")
        return "ok"

    assert app.test_client().post("/notes").status_code == 200
    assert count_rows(admin, table) == 1


def test_explicit_commit_is_kept_and_later_work_rolled_back(
    make_app: Callable[..., Flask], admin: connection, table: str, user_config: UserConfig
) -> None:
    app = make_app()

    @app.post("/notes")
    def add() -> str:
        insert("committed", table)
        get_db().commit()
        insert("not committed", table)
        return "ok"

    assert app.test_client().post("/notes").status_code == 200
    with admin.cursor() as cur:
        cur.execute(f"SELECT note FROM {table} ORDER BY id")
        assert cur.fetchall() == [("committed",)] + [("not committed",)] * left_behind(1, user_config)


def test_uncommitted_write_is_gone(
    make_app: Callable[..., Flask], server_sessions: Sessions, admin: connection, table: str, user_config: UserConfig
) -> None:
    app = make_app()

    @app.post("/notes")
    def add() -> str:
        insert("never committed", table)
        return "ok"

    @app.get("/notes")
    def count() -> dict[str, int]:
        with get_db().cursor() as cur:
            cur.execute(f"SELECT count(*) FROM {table}")
            return {"count": fetch_value(cur)}

    client = app.test_client()
    assert client.post("/notes").status_code == 200
    # Not even the same pooled connection sees it.
    assert client.get("/notes").json == {"count": left_behind(1, user_config)}
    assert count_rows(admin, table) == left_behind(1, user_config)
    assert_given_back(app, server_sessions)


# -- blueprints -----------------------------------------------------------------


def test_get_db_in_a_blueprint_without_the_instance(make_app: Callable[..., Flask]) -> None:
    # The blueprint knows only flask_pgpool.get_db, as a blueprint module would.
    bp = Blueprint("reports", __name__, url_prefix="/reports")

    @bp.get("/answer")
    def answer() -> dict[str, int]:
        with get_db().cursor() as cur:
            cur.execute("SELECT 6 * 7")
            return {"answer": fetch_value(cur)}

    app = make_app()
    app.register_blueprint(bp)
    assert app.test_client().get("/reports/answer").json == {"answer": 42}
    assert stats(app)["pool_available"] == 1


# -- 503 when the pool cannot serve -------------------------------------------


@pytest.fixture
def busy_app(make_app: Callable[..., Flask]) -> Callable[..., Flask]:
    """An app whose only connection is held by the test: the next checkout times out."""

    def make(**config: Any) -> Flask:
        app = make_app(PGPOOL_MAXCONN=1, PGPOOL_TIMEOUT=0.3, **config)

        @app.get("/db")
        def db() -> str:
            get_db()
            return "got one"

        pool = app.extensions["pgpool"].get_pool(app=app)
        held = pool.getconn()
        app.config["held"] = (pool, held)
        return app

    return make


def test_pool_timeout_answers_503_with_retry_after(busy_app: Callable[..., Flask]) -> None:
    app = busy_app(PGPOOL_RETRY_AFTER=7)
    started = time.monotonic()
    response = app.test_client().get("/db")
    assert time.monotonic() - started < 5
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "7"
    assert stats(app)["requests_errors"] == 1
    # Once the connection is back, the app serves again.
    pool, held = app.config["held"]
    pool.putconn(held)
    assert app.test_client().get("/db").status_code == 200


def test_retry_after_zero_sends_no_header(busy_app: Callable[..., Flask]) -> None:
    response = busy_app(PGPOOL_RETRY_AFTER=0).test_client().get("/db")
    assert response.status_code == 503
    assert "Retry-After" not in response.headers


def test_503_body_and_log_never_show_the_password(
    make_app: Callable[..., Flask], pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    password = "Sup3r-Secret-pw"
    dsn = psycopg2.extensions.make_dsn(pg_dsn, password=password)
    app = make_app(PGPOOL_DSN=dsn, PGPOOL_MAXCONN=1, PGPOOL_TIMEOUT=0.3)

    @app.get("/db")
    def db() -> str:
        get_db()
        return "got one"

    pool = app.extensions["pgpool"].get_pool(app=app)
    held = pool.getconn()
    with caplog.at_level(logging.DEBUG, logger="flask_pgpool"):
        response = app.test_client().get("/db")
    pool.putconn(held)
    assert response.status_code == 503
    assert password not in response.text
    assert "PGPOOL_MAXCONN" not in response.text  # internals stay in the log
    assert "answering 503" in caplog.text
    assert password not in caplog.text


def test_app_handler_for_pool_timeout_wins(busy_app: Callable[..., Flask]) -> None:
    from flask_pgpool import PoolTimeout

    app = busy_app()

    @app.errorhandler(PoolTimeout)
    def busy(error: PoolTimeout) -> tuple[str, int]:
        return "come back later", 429

    response = app.test_client().get("/db")
    assert (response.status_code, response.text) == (429, "come back later")


def test_app_handler_for_503_shapes_the_response(busy_app: Callable[..., Flask]) -> None:
    app = busy_app()

    @app.errorhandler(503)
    def unavailable(error: Exception) -> tuple[dict[str, str], int]:
        return {"error": "busy"}, 503

    response = app.test_client().get("/db")
    assert response.status_code == 503
    assert response.json == {"error": "busy"}


def test_app_handler_registered_before_init_app_wins(pg_dsn: str, app_name: str) -> None:
    from flask_pgpool import PgPoolError

    app = Flask(__name__)
    app.config.update(PGPOOL_DSN=pg_dsn, PGPOOL_MAXCONN=1, PGPOOL_TIMEOUT=0.3)

    @app.errorhandler(PgPoolError)
    def busy(error: PgPoolError) -> tuple[str, int]:
        return "mine", 500

    @app.get("/db")
    def db() -> str:
        get_db()
        return "got one"

    ext = PgPool(app, connect_args={"application_name": app_name})
    try:
        held = ext.get_pool(app=app).getconn()
        response = app.test_client().get("/db")
        assert (response.status_code, response.text) == (500, "mine")
        ext.get_pool(app=app).putconn(held)
    finally:
        ext.close(app)


# -- teardown never raises ------------------------------------------------------


@pytest.fixture
def app_with_later_teardown(make_app: Callable[..., Flask]) -> tuple[Flask, list[bool]]:
    """An app with a teardown function of its own that runs after flask-pgpool's."""
    ran: list[bool] = []

    def register_first(app: Flask) -> None:
        # Registered before init_app, so Flask runs it after flask-pgpool's teardown.
        app.teardown_appcontext(lambda exc: ran.append(True))

    app = make_app(before_init=register_first, PGPOOL_MAXCONN=1, PGPOOL_TIMEOUT=3)

    @app.get("/pid")
    def pid() -> dict[str, int]:
        return {"pid": backend_pid()}

    return app, ran


def test_teardown_survives_a_view_that_closed_its_connection(app_with_later_teardown: tuple[Flask, list[bool]]) -> None:
    app, ran = app_with_later_teardown

    @app.get("/close")
    def close() -> str:
        get_db().close()
        return "closed"

    client = app.test_client()
    assert client.get("/close").status_code == 200
    assert ran == [True]
    s = stats(app)
    # Discarded, not pooled, and its slot is free.
    assert s["returns_bad"] == 1
    assert nothing_checked_out(app)
    # maxconn is 1: the next request works only if the slot was freed.
    assert client.get("/pid").status_code == 200


def test_get_db_after_the_view_closed_the_connection_gives_a_new_one(
    app_with_later_teardown: tuple[Flask, list[bool]],
) -> None:
    app, _ran = app_with_later_teardown

    @app.get("/reopen")
    def reopen() -> dict[str, bool]:
        first = get_db()
        first.close()
        second = get_db()
        with second.cursor() as cur:
            cur.execute("SELECT 1")
        return {"new": second is not first}

    client = app.test_client()
    assert client.get("/reopen").json == {"new": True}
    assert client.get("/pid").status_code == 200


def test_get_db_after_the_view_returned_and_closed_the_connection(
    app_with_later_teardown: tuple[Flask, list[bool]], caplog: pytest.LogCaptureFixture
) -> None:
    app, ran = app_with_later_teardown

    @app.get("/returned")
    def returned() -> dict[str, bool]:
        first = get_db()
        app.extensions["pgpool"].get_pool().putconn(first, close=True)
        second = get_db()
        with second.cursor() as cur:
            cur.execute("SELECT 1")
        return {"new": second is not first}

    client = app.test_client()
    with caplog.at_level(logging.WARNING, logger="flask_pgpool"):
        assert client.get("/returned").json == {"new": True}
    assert ran == [True]
    assert "not checked out any more" in caplog.text
    # maxconn is 1: the slot of the second connection was freed too.
    assert client.get("/pid").status_code == 200


def test_teardown_survives_a_connection_the_server_killed(
    app_with_later_teardown: tuple[Flask, list[bool]], admin: connection, server_sessions: Sessions
) -> None:
    app, ran = app_with_later_teardown

    @app.get("/killed")
    def killed() -> str:
        pid = backend_pid()  # leaves a transaction open
        with admin.cursor() as cur:
            # With a timeout, it returns once the session is gone (PostgreSQL 14+).
            cur.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
            assert cur.fetchone() == (True,)
        return "killed"

    client = app.test_client()
    assert client.get("/killed").status_code == 200
    assert ran == [True]
    assert nothing_checked_out(app)
    assert client.get("/pid").status_code == 200
    assert wait_for_states(server_sessions, ["idle"]) == ["idle"]
    s = stats(app)
    # Discarded once: on return when its rollback fails, or (returned without a
    # transaction, as in autocommit) by the next checkout's look at the socket.
    assert s["returns_bad"] + s["connections_lost"] == 1


def test_teardown_logs_instead_of_raising_when_the_view_returned_the_connection(
    app_with_later_teardown: tuple[Flask, list[bool]], caplog: pytest.LogCaptureFixture
) -> None:
    app, ran = app_with_later_teardown

    @app.get("/early")
    def early() -> str:
        app.extensions["pgpool"].get_pool().putconn(get_db())
        return "returned it myself"

    client = app.test_client()
    with caplog.at_level(logging.ERROR, logger="flask_pgpool"):
        assert client.get("/early").status_code == 200
    assert ran == [True]
    assert "could not return" in caplog.text
    assert client.get("/pid").status_code == 200
