"""Each request ends as in production, even inside an app context the test holds.

pytest-flask pushes a request context for every test that uses the ``app``
fixture, and a test may push one itself (``with app.app_context():``): the
test client's requests then run inside that one app context, whose teardown
runs only when the test ends. Every request must still roll back what it did
not commit and give its connection back when it ends.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import psycopg2.extensions
import pytest
from flask import Flask, abort, has_request_context
from flask.testing import FlaskClient
from psycopg2.extensions import connection
from support.http import fetch_value
from support.userconfigs import UserConfig

from flask_pgpool import get_db
from flask_pgpool.testing import rolled_back

pytestmark = pytest.mark.user_configs


@pytest.fixture(autouse=True)
def in_transactions(user_config: UserConfig) -> None:
    if user_config.autocommit:
        pytest.skip("about work a request did not commit: in autocommit every statement commits")


def add_views(app: Flask, table: str) -> Flask:
    """Views that leave work behind in each of the ways a request can end."""

    def insert(note: str) -> None:
        with get_db().cursor() as cur:
            cur.execute(f"INSERT INTO {table} (note) VALUES (%s)", (note,))

    @app.post("/raise")
    def raises() -> str:
        insert("written before the crash")
        raise ValueError("the view failed")

    @app.post("/abort")
    def aborts() -> str:
        insert("written before abort")
        abort(404)

    @app.post("/uncommitted")
    def uncommitted() -> str:
        insert("never committed")
        return "ok"

    @app.post("/committed")
    def committed() -> str:
        insert("committed")
        get_db().commit()
        return "ok"

    @app.get("/bad-sql")
    def bad_sql() -> str:
        with get_db().cursor() as cur:
            cur.execute("SELECT 1 / 0")
        return "unreachable"

    @app.get("/pid")
    def pid() -> dict[str, int]:
        with get_db().cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            return {"pid": int(fetch_value(cur))}

    @app.get("/count")
    def count() -> dict[str, int]:
        with get_db().cursor() as cur:
            cur.execute(f"SELECT count(*) FROM {table}")
            return {"count": int(fetch_value(cur))}

    return app


def idle(app: Flask) -> bool:
    """Whether every connection of the app's pool is back in the pool."""
    stats = app.extensions["pgpool"].get_stats(app=app)
    return bool(stats["pool_size"] == stats["pool_available"])


def outside_count(admin: connection, table: str) -> int:
    with admin.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {table}")
        return int(fetch_value(cur))


UNFINISHED = [("/raise", 500), ("/abort", 404), ("/uncommitted", 200)]


# -- under pytest-flask: the test's request context is pushed before the test ---


@pytest.fixture
def app(make_app: Callable[..., Flask], table: str) -> Flask:
    return add_views(make_app(PGPOOL_MAXCONN=2, PGPOOL_TIMEOUT=2, PROPAGATE_EXCEPTIONS=False), table)


def test_pytest_flask_holds_a_context_for_the_test(app: Flask) -> None:
    # What the tests below rely on: the requests share the test's app context.
    assert has_request_context()


@pytest.mark.parametrize(("path", "status"), UNFINISHED)
def test_unfinished_work_is_gone_before_the_next_request(
    app: Flask, client: FlaskClient, admin: connection, table: str, path: str, status: int
) -> None:
    assert client.post(path).status_code == status
    assert idle(app)
    assert client.get("/count").json == {"count": 0}
    assert outside_count(admin, table) == 0


def test_sql_error_does_not_fail_the_next_request(app: Flask, client: FlaskClient) -> None:
    assert client.get("/bad-sql").status_code == 500
    assert idle(app)
    assert client.get("/count").status_code == 200


def test_committed_work_stays(app: Flask, client: FlaskClient, admin: connection, table: str) -> None:
    assert client.post("/committed").status_code == 200
    assert client.post("/uncommitted").status_code == 200
    assert client.get("/count").json == {"count": 1}
    assert outside_count(admin, table) == 1


def test_every_request_checks_out_and_gives_back(app: Flask, client: FlaskClient) -> None:
    for _ in range(3):
        assert client.post("/uncommitted").status_code == 200
        assert idle(app)
    stats = app.extensions["pgpool"].get_stats(app=app)
    assert stats["requests_num"] == 3
    # Given back and taken again: one connection served them all.
    assert stats["connections_num"] == 1


def test_a_request_does_not_take_the_tests_connection(app: Flask, client: FlaskClient) -> None:
    # get_db() in the test body belongs to the test's context; a request gets its own.
    mine = get_db()
    with mine.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        pid = fetch_value(cur)
    assert client.get("/pid").json != {"pid": pid}
    assert idle(app) is False  # the test's connection is still out...
    with mine.cursor() as cur:  # ...and still the test's
        cur.execute("SELECT pg_backend_pid()")
        assert fetch_value(cur) == pid


def test_pgpool_transaction_still_undoes_the_whole_test(
    app: Flask, client: FlaskClient, pgpool_transaction: connection, admin: connection, table: str
) -> None:
    assert client.post("/committed").status_code == 200
    for path, status in UNFINISHED:
        assert client.post(path).status_code == status
    assert client.get("/bad-sql").status_code == 500
    # What a request committed stays for the test; the rest ended with its request.
    assert client.get("/count").json == {"count": 1}
    with pgpool_transaction.cursor(cursor_factory=psycopg2.extensions.cursor) as cur:
        cur.execute(f"SELECT note FROM {table}")
        assert cur.fetchall() == [("committed",)]
    assert outside_count(admin, table) == 0


# -- a plain test client inside a context the test pushed --------------------------


@pytest.fixture(params=["app_context", "test_request_context"])
def pushed(request: pytest.FixtureRequest) -> Callable[[Flask], AbstractContextManager[object]]:
    """A context pushed by the test around its requests."""
    return lambda flask_app: getattr(flask_app, request.param)()


@pytest.fixture
def plain_app(make_app: Callable[..., Flask], table: str) -> Iterator[Flask]:
    yield add_views(make_app(PGPOOL_MAXCONN=2, PGPOOL_TIMEOUT=2, PROPAGATE_EXCEPTIONS=False), table)


@pytest.mark.parametrize(("path", "status"), UNFINISHED)
def test_plain_client_in_a_pushed_context(
    plain_app: Flask,
    pushed: Callable[[Flask], AbstractContextManager[object]],
    admin: connection,
    table: str,
    path: str,
    status: int,
) -> None:
    client = plain_app.test_client()
    with pushed(plain_app):
        assert client.post(path).status_code == status
        assert idle(plain_app)
        assert client.get("/count").json == {"count": 0}
        assert client.get("/bad-sql").status_code == 500
        assert client.get("/count").status_code == 200
    assert outside_count(admin, table) == 0


def test_rolled_back_inside_a_pushed_context(plain_app: Flask, admin: connection, table: str) -> None:
    client = plain_app.test_client()
    with plain_app.app_context(), rolled_back(plain_app):
        assert client.post("/committed").status_code == 200
        assert client.post("/uncommitted").status_code == 200
        assert client.get("/bad-sql").status_code == 500
        assert client.get("/count").json == {"count": 1}
    assert outside_count(admin, table) == 0


def _finishes(work: Callable[[], None], seconds: float = 30) -> None:
    """Run ``work`` in a thread: a loop that never ends fails the test instead of hanging the suite."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # handed to the test below
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"did not finish in {seconds} s"
    if errors:
        raise errors[0]


def test_the_test_clients_kept_context_then_a_nested_app_context(plain_app: Flask) -> None:
    """The Flask tutorial's tests check the data with ``with app.app_context(): get_db()``
    after a request, inside ``with client:`` (pytest-flask's ``client`` fixture keeps it
    open): the test client pushes the request's app context again while it is current."""

    def scenario() -> None:
        with plain_app.test_request_context(), plain_app.test_client() as client:
            assert client.get("/count").status_code == 200
            with plain_app.app_context(), get_db().cursor() as cur:
                cur.execute("SELECT 1")

    _finishes(scenario)
    stats = plain_app.extensions["pgpool"].get_stats(app=plain_app)
    assert stats["returns_bad"] == 0, "a healthy connection was thrown away on its return"
    assert idle(plain_app)


def test_an_app_context_pushed_twice_may_use_the_enclosing_connection(plain_app: Flask) -> None:
    def scenario() -> None:
        with plain_app.app_context():
            db = get_db()
            inner = plain_app.app_context()
            with inner, inner, db.cursor() as cur:
                cur.execute("SELECT 1")

    _finishes(scenario)
