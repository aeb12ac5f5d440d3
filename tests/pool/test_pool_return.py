"""What a returned connection looks like to the next checkout: no open
transaction, and, when asked for, no session state either."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg2
import pytest
from flask import Flask
from psycopg2.extensions import TRANSACTION_STATUS_IDLE, connection
from support.poolkit import PoolFactory, backend_pid, query_one

from flask_pgpool import get_db


def _locks_held(admin: connection, pid: int) -> int:
    return int(query_one(admin, "SELECT count(*) FROM pg_locks WHERE pid = %s AND locktype = 'advisory'", (pid,)))


@pytest.mark.no_pgbouncer  # looks at the server session of the connection
def test_begin_sent_in_autocommit_is_ended_on_return(make_pool: PoolFactory, admin: connection) -> None:
    """psycopg2's rollback() sends nothing in autocommit; the server's status decides."""
    pool = make_pool(0, 1)
    conn = pool.getconn()
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute("SELECT pg_advisory_xact_lock(4242)")
    pid = backend_pid(conn)
    assert _locks_held(admin, pid) == 1
    pool.putconn(conn)
    assert conn.info.transaction_status == TRANSACTION_STATUS_IDLE
    assert _locks_held(admin, pid) == 0, "the returned connection still holds its transaction's locks"
    # Ended, not thrown away: the same connection serves the next checkout.
    assert pool.getconn() is conn
    assert conn.autocommit is False  # its session settings are back as opened
    stats = pool.get_stats()
    assert stats["connections_lost"] == 0 and stats["returns_bad"] == 0
    pool.putconn(conn)


@pytest.mark.no_pgbouncer  # a COMMIT sent as SQL inside PgBouncer's transaction pooling ends the pairing
@pytest.mark.parametrize("statement", ["COMMIT", "ROLLBACK"])
def test_a_transaction_ended_with_sql_is_ended_for_the_driver_too(
    make_pool: PoolFactory, admin: connection, statement: str
) -> None:
    """After COMMIT sent as SQL the server is idle but psycopg2 thinks a
    transaction is open: pooled as it is, it would send no BEGIN for the next
    borrower, whose uncommitted work would then be committed statement by statement."""
    pool = make_pool(0, 1)
    conn = pool.getconn()
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
        cur.execute(statement)
    pool.putconn(conn)
    again = pool.getconn()
    with again.cursor() as cur:
        cur.execute("CREATE TEMP TABLE IF NOT EXISTS pgpool_sql_commit (n int)")
        cur.execute("INSERT INTO pgpool_sql_commit VALUES (1)")
    again.rollback()  # what the next request's teardown does with its uncommitted work
    with again.cursor() as cur:
        cur.execute("SELECT to_regclass('pg_temp.pgpool_sql_commit') IS NULL")
        row = cur.fetchone()
    again.rollback()
    assert row == (True,), "the next borrower's work was committed without commit()"
    assert pool.get_stats()["returns_bad"] == 0  # set right, not thrown away
    pool.putconn(again)


@pytest.mark.no_pgbouncer  # two-phase commit is refused by PgBouncer in transaction pooling
def test_a_failed_two_phase_transaction_is_not_pooled(make_pool: PoolFactory) -> None:
    pool = make_pool(0, 1)
    conn = pool.getconn()
    conn.tpc_begin(conn.xid(1, "pgpool-test", "branch"))
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
    try:
        conn.tpc_prepare()  # refused unless the server allows prepared transactions
    except psycopg2.Error:
        pass
    else:
        conn.tpc_rollback()
        conn.tpc_begin(conn.xid(2, "pgpool-test", "branch"))
    pool.putconn(conn)
    again = pool.getconn()
    with again.cursor() as cur:
        cur.execute("SELECT 1")
    again.commit()  # refused during a two-phase transaction, had the connection been kept
    assert again is not conn
    pool.putconn(again)


def _session_state(conn: connection) -> tuple[str, str, list[str]]:
    with conn.cursor() as cur:
        cur.execute("SHOW search_path")
        row = cur.fetchone()
        cur.execute("SELECT current_user, coalesce(array_agg(c), '{}') FROM pg_listening_channels() AS c")
        user_row = cur.fetchone()
    conn.rollback()
    assert row is not None and user_row is not None
    return str(row[0]), str(user_row[0]), list(user_row[1])


def _dirty(conn: connection) -> None:
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SET search_path TO pg_catalog")
        cur.execute("LISTEN pgpool_reset_test")
        cur.execute("DECLARE held CURSOR WITH HOLD FOR SELECT 1")
    conn.autocommit = False


@pytest.mark.no_pgbouncer  # session state cannot be kept through transaction pooling
def test_session_state_survives_a_return_by_default(make_pool: PoolFactory) -> None:
    pool = make_pool(0, 1)
    conn = pool.getconn()
    _dirty(conn)
    pool.putconn(conn)
    again = pool.getconn()
    assert again is conn
    search_path, _, channels = _session_state(again)
    assert search_path == "pg_catalog" and channels == ["pgpool_reset_test"]
    pool.putconn(again)


@pytest.mark.no_pgbouncer
@pytest.mark.parametrize("reset", ["DISCARD ALL", "callable"])
def test_reset_clears_session_state_on_return(make_pool: PoolFactory, reset: str) -> None:
    def discard(conn: connection) -> None:
        # Called in autocommit, as the SQL form runs: DISCARD ALL works as it is.
        with conn.cursor() as cur:
            cur.execute("DISCARD ALL")

    pool = make_pool(0, 1, reset=discard if reset == "callable" else reset)
    conn = pool.getconn()
    before = _session_state(conn)
    _dirty(conn)
    pool.putconn(conn)
    again = pool.getconn()
    assert again is conn  # reset, not reconnected
    assert _session_state(again) == before
    with again.cursor() as cur, pytest.raises(psycopg2.errors.InvalidCursorName):
        cur.execute("FETCH held")
    again.rollback()
    assert again.autocommit is False
    pool.putconn(again)
    assert pool.get_stats()["returns_bad"] == 0


@pytest.mark.no_pgbouncer
def test_configure_runs_again_after_a_reset(make_pool: PoolFactory) -> None:
    """A reset would undo what configure set; configure runs again after it."""

    def configure(conn: connection) -> None:
        with conn.cursor() as cur:
            cur.execute("SET search_path TO information_schema, public")
        conn.commit()

    pool = make_pool(0, 1, reset="DISCARD ALL", configure=configure)
    conn = pool.getconn()
    _dirty(conn)
    pool.putconn(conn)
    again = pool.getconn()
    assert _session_state(again)[0] == "information_schema, public"
    pool.putconn(again)


@pytest.mark.parametrize(
    "reset",
    [pytest.param("SELECT 1/0", id="sql"), pytest.param(lambda conn: conn.close(), id="callable")],
)
def test_a_failing_reset_discards_the_connection_and_frees_its_slot(
    make_pool: PoolFactory, reset: str | Callable[[connection], None]
) -> None:
    pool = make_pool(0, 1, reset=reset, timeout=2)
    conn = pool.getconn()
    pool.putconn(conn)
    assert conn.closed
    stats = pool.get_stats()
    assert stats["returns_bad"] == 1 and stats["pool_size"] == 0
    fresh = pool.getconn()
    assert fresh is not conn
    pool.putconn(fresh)


def test_pgpool_reset_key_resets_each_request_connection(make_app: Callable[..., Flask]) -> None:
    app = make_app(PGPOOL_RESET="DISCARD ALL", PGPOOL_MAXCONN=1)

    @app.get("/dirty")
    def dirty() -> str:
        db = get_db()
        with db.cursor() as cur:
            cur.execute("SET search_path TO pg_catalog")
        db.commit()
        return "ok"

    @app.get("/search_path")
    def search_path() -> str:
        with get_db().cursor() as cur:
            cur.execute("SHOW search_path")
            row = cur.fetchone()
        assert row is not None
        return str(row[0])

    client = app.test_client()
    before = client.get("/search_path").text
    assert client.get("/dirty").status_code == 200
    assert client.get("/search_path").text == before


def test_closing_a_connection_mid_query_cancels_the_query(
    pg_server_dsn: str, app_name: str, server_sessions: Callable[..., list[tuple[Any, ...]]]
) -> None:
    """A closed socket does not stop the server: a query still running is cancelled before the close."""
    import psycopg2.extras
    from support.wsgiserver import eventually

    from flask_pgpool._session import close_quietly

    # An asynchronous connection: the query runs on the server while this thread goes on.
    conn = psycopg2.connect(pg_server_dsn, application_name=app_name, async_=1)
    psycopg2.extras.wait_select(conn)
    conn.cursor().execute("SELECT pg_sleep(60)")
    assert not eventually(lambda: server_sessions("active") == [], timeout=10)
    close_quietly(conn)
    assert conn.closed
    assert eventually(lambda: server_sessions("active"), timeout=5) == []
