"""The extension's contract: setup per app, get_db() errors, several apps, stats, reprs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg2
import pytest
from flask import Flask
from psycopg2.pool import ThreadedConnectionPool
from support.http import fetch_value

from flask_pgpool import STATS_KEYS, ConnectionPool, PgPool, get_db

PASSWORD = "Hunter2-extension"


def pid_of(conn: Any) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        return int(fetch_value(cur))


def test_init_app_registers_the_extension_and_a_threaded_pool(make_app: Callable[..., Flask]) -> None:
    ext = PgPool()
    app = make_app(ext)
    assert app.extensions["pgpool"] is ext
    pool = ext.get_pool(app=app)
    # Code written for psycopg2's pool keeps working with ours.
    assert isinstance(pool, ThreadedConnectionPool)
    assert isinstance(pool, ConnectionPool)
    conn = pool.getconn()
    assert pid_of(conn) > 0
    pool.putconn(conn)
    assert "pgpool-status" in app.cli.commands


def test_the_extension_does_not_keep_the_app(make_app: Callable[..., Flask]) -> None:
    ext = PgPool()
    app = make_app(ext)
    assert app not in vars(ext).values()
    assert "apps=1" in repr(ext)


def test_get_db_outside_an_app_context_says_what_to_do() -> None:
    with pytest.raises(RuntimeError, match="application context"):
        get_db()
    with pytest.raises(RuntimeError, match="application context"):
        PgPool().get_db()


def test_get_db_on_an_app_without_pgpool_says_what_to_do() -> None:
    app = Flask(__name__)
    with app.app_context(), pytest.raises(RuntimeError, match=r"not set up on this app.*init_app"):
        get_db()


def test_get_db_of_a_pgpool_not_set_up_on_this_app(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    with app.app_context(), pytest.raises(RuntimeError, match="init_app"):
        PgPool().get_db()


def test_second_init_app_on_the_same_app_is_refused(make_app: Callable[..., Flask]) -> None:
    ext = PgPool()
    app = make_app(ext)
    pool = ext.get_pool(app=app)
    teardowns = list(app.teardown_appcontext_funcs)
    with pytest.raises(RuntimeError, match="once per app"):
        ext.init_app(app)
    with pytest.raises(RuntimeError, match="once per app"):
        PgPool().init_app(app)
    # The first setup is untouched.
    assert ext.get_pool(app=app) is pool
    assert app.teardown_appcontext_funcs == teardowns


def test_two_apps_each_have_their_own_pool(make_app: Callable[..., Flask]) -> None:
    first, second = make_app(PGPOOL_MAXCONN=3), make_app(PGPOOL_MAXCONN=5)
    pool_1 = first.extensions["pgpool"].get_pool(app=first)
    pool_2 = second.extensions["pgpool"].get_pool(app=second)
    assert pool_1 is not pool_2
    with first.app_context():
        conn = get_db()
        pid_of(conn)
    assert pool_1.get_stats()["requests_num"] == 1
    assert pool_2.get_stats()["requests_num"] == 0
    assert (pool_1.maxconn, pool_2.maxconn) == (3, 5)


def test_one_pgpool_serves_two_apps(make_app: Callable[..., Flask]) -> None:
    ext = PgPool()
    first, second = make_app(ext), make_app(ext)
    assert ext.get_pool(app=first) is not ext.get_pool(app=second)
    with first.app_context():
        conn_1 = ext.get_db()
        pid_1 = pid_of(conn_1)
        with second.app_context():
            conn_2 = get_db()
            assert conn_2 is not conn_1
            assert pid_of(conn_2) != pid_1
        # Back in the first app's context: its connection again.
        assert get_db() is conn_1
    assert ext.get_stats(app=first)["requests_num"] == 1
    assert ext.get_stats(app=second)["requests_num"] == 1
    ext.close(first)
    assert ext.get_pool(app=first).closed
    assert not ext.get_pool(app=second).closed


def test_get_stats_has_exactly_the_documented_keys(make_app: Callable[..., Flask]) -> None:
    ext = PgPool()
    app = make_app(ext, PGPOOL_MINCONN=0, PGPOOL_MAXCONN=7)
    with app.app_context():
        get_db()
        stats = ext.get_stats()
    assert tuple(stats) == STATS_KEYS
    assert all(isinstance(v, int) for v in stats.values())
    assert (stats["pool_min"], stats["pool_max"], stats["requests_num"]) == (0, 7, 1)


def test_binds_have_their_own_pools(make_app: Callable[..., Flask], pg_dsn: str) -> None:
    ext = PgPool()
    app = make_app(ext, PGPOOL_BINDS={"reports": {"dsn": pg_dsn, "maxconn": 2}})
    with app.app_context():
        main = get_db()
        reports = get_db("reports")
        assert reports is not main
        assert get_db("reports") is reports
        with pytest.raises(KeyError, match=r"'nope'.*'default', 'reports'"):
            get_db("nope")
    assert set(ext.get_pools(app=app)) == {"default", "reports"}
    assert ext.get_stats("reports", app=app)["pool_max"] == 2
    assert ext.get_stats("reports", app=app)["pool_available"] == 1


def test_close_makes_get_db_fail_with_pool_closed(make_app: Callable[..., Flask]) -> None:
    from flask_pgpool import PoolClosed

    ext = PgPool()
    app = make_app(ext)
    ext.close(app)
    ext.close(app)  # idempotent
    with app.app_context(), pytest.raises(PoolClosed):
        get_db()


def test_reprs_never_show_the_password(make_app: Callable[..., Flask], pg_dsn: str) -> None:
    dsn = psycopg2.extensions.make_dsn(pg_dsn, password=PASSWORD)
    ext = PgPool()
    app = make_app(ext, PGPOOL_DSN=dsn, PGPOOL_CONNECT_ARGS={"password": PASSWORD})
    pool = ext.get_pool(app=app)
    with app.app_context():
        get_db()
        shown = [repr(ext), repr(pool), pool.dsn, str(ext.get_stats())]
        shown += [repr(s) for s in ext._state(None).settings.values()]
    for text in shown:
        assert PASSWORD not in text
    assert "***" in pool.dsn


def test_works_with_pytest_flask_client(app: Flask, client: Any) -> None:
    # pytest-flask keeps one app context for the whole test; each request still
    # checks out and gives back, and the second one gets the connection the first gave back.
    @app.get("/pid")
    def pid() -> dict[str, int]:
        return {"pid": pid_of(get_db())}

    assert client.get("/pid").json == client.get("/pid").json
    stats = app.extensions["pgpool"].get_stats(app=app)
    assert (stats["requests_num"], stats["connections_num"], stats["pool_available"]) == (2, 1, 1)


def test_get_db_in_a_cli_command_is_given_back(make_app: Callable[..., Flask]) -> None:
    app = make_app()

    @app.cli.command("answer")
    def answer() -> None:
        with get_db().cursor() as cur:
            cur.execute("SELECT 6 * 7")
            print(fetch_value(cur))

    result = app.test_cli_runner().invoke(args=["answer"])
    assert result.exit_code == 0, result.output
    assert result.output == "42\n"
    stats = app.extensions["pgpool"].get_stats(app=app)
    assert (stats["pool_size"], stats["pool_available"]) == (1, 1)
