"""A read-write pool whose server is fenced read-only while it keeps its sessions.

One primary and a streaming standby for the module; each test fences the
primary and lifts the fence again. The pool's DSN names both servers with
``target_session_attrs=read-write``.
"""

from __future__ import annotations

import contextlib
import logging
import select
import threading
import uuid
from collections.abc import Iterator
from typing import cast

import psycopg2
import pytest
from psycopg2.extensions import connection
from support.netproxy import TcpProxy
from support.poolkit import PoolFactory, backend_pid, query_one, via_proxy
from support.replication import ReplicatedPair, execute, replicated_pair, scalar

from flask_pgpool import PoolTimeout
from flask_pgpool._health import SocketState
from flask_pgpool._record import ConnectionRecord, HealthPolicy, Verdict

# The statement of the pool's ping, which verifies a suspect connection.
PING_SQL = "SELECT 1"


@pytest.fixture(scope="module")
def pair() -> Iterator[ReplicatedPair]:
    with replicated_pair("pool-failover") as replicated:
        yield replicated


@pytest.fixture
def primary(pair: ReplicatedPair) -> Iterator[ReplicatedPair]:
    """The pair, its primary unfenced again after the test."""
    yield pair
    pair.unfence(pair.nodes[0])


@pytest.fixture
def make_pool(pair: ReplicatedPair, app_name: str) -> Iterator[PoolFactory]:
    factory = PoolFactory(pair.dsn(), app_name)
    yield factory
    factory.close()


@pytest.fixture
def table(pair: ReplicatedPair) -> str:
    name = f"t_{uuid.uuid4().hex[:12]}"
    execute(pair.nodes[0], f"CREATE TABLE {name} (n int)")
    return name


def last_query(pair: ReplicatedPair, pid: int) -> str:
    return str(scalar(pair.nodes[0], "SELECT query FROM pg_stat_activity WHERE pid = %s", (pid,)))


def sessions(pair: ReplicatedPair, app_name: str) -> set[int]:
    rows = scalar(pair.nodes[0], "SELECT array_agg(pid) FROM pg_stat_activity WHERE application_name = %s", (app_name,))
    return set(rows or ())


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "flask_pgpool" and r.levelno >= logging.WARNING]


def autocommit(conn: connection) -> None:
    conn.autocommit = True


def open_idle(pool: object, count: int) -> list[int]:
    """Check out ``count`` connections at once, use and return them; their backend pids."""
    from flask_pgpool import ConnectionPool

    assert isinstance(pool, ConnectionPool)
    conns = [pool.getconn() for _ in range(count)]
    pids = []
    for conn in conns:
        query_one(conn, "SELECT 1")
        pids.append(backend_pid(conn))
        pool.putconn(conn)
    return pids


def failed_write(conn: connection, table: str, ended_by: str) -> None:
    """A write the fenced server refuses, ended the way views end one."""
    with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
        if ended_by == "with conn":  # the README's pattern: its exit rolls back
            with conn, conn.cursor() as cur:
                cur.execute(f"INSERT INTO {table} VALUES (1)")
        else:
            try:
                with conn.cursor() as cur:
                    cur.execute(f"INSERT INTO {table} VALUES (1)")
            finally:
                if ended_by == "rollback":  # a view that catches the error and rolls back
                    conn.rollback()


@pytest.mark.parametrize(
    ("in_autocommit", "ended_by"),
    [(False, "nothing"), (False, "with conn"), (False, "rollback"), (True, "nothing")],
)
def test_fenced_server_found_on_return_and_idle_connections_verified(
    primary: ReplicatedPair,
    make_pool: PoolFactory,
    table: str,
    app_name: str,
    caplog: pytest.LogCaptureFixture,
    in_autocommit: bool,
    ended_by: str,
) -> None:
    caplog.set_level(logging.INFO, logger="flask_pgpool")
    pool = make_pool(0, 3, timeout=2, configure=autocommit if in_autocommit else None)
    pids = open_idle(pool, 3)
    primary.fence(primary.nodes[0])

    conn = pool.getconn()
    failed_write(conn, table, ended_by)
    pool.putconn(conn)  # the request's error is its own; the connection is not kept
    assert backend_pid(conn) not in sessions(primary, app_name)

    # The two others are verified before use and discarded; no server takes writes now.
    with pytest.raises(PoolTimeout, match="session is read-only"):
        pool.getconn()
    assert sessions(primary, app_name) == set()
    assert len([w for w in warnings_of(caplog) if "failover" in w]) == 1
    assert set(pids) & sessions(primary, app_name) == set()

    primary.unfence(primary.nodes[0])  # here: the same server takes writes again
    conn = pool.getconn(timeout=10)
    query_one(conn, f"INSERT INTO {table} VALUES (2) RETURNING n")
    conn.commit()
    pid = backend_pid(conn)
    pool.putconn(conn)
    assert any("connected to a writable server" in r.getMessage() for r in caplog.records)
    # Opened after the failover was detected: handed out without a round trip.
    again = pool.getconn()
    assert backend_pid(again) == pid
    assert last_query(primary, pid) != PING_SQL
    pool.putconn(again)


def test_pool_idle_across_the_fence_verifies_at_the_ping(
    primary: ReplicatedPair, make_pool: PoolFactory, app_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    pool = make_pool(0, 2, timeout=2, ping_after=0)
    open_idle(pool, 2)
    primary.fence(primary.nodes[0])
    # No connection to the fenced server is handed out, so no query of the caller fails.
    with pytest.raises(PoolTimeout, match="session is read-only"):
        pool.getconn()
    assert sessions(primary, app_name) == set()
    assert len([w for w in warnings_of(caplog) if "failover" in w]) == 1


def test_healthy_pool_verifies_nothing(primary: ReplicatedPair, make_pool: PoolFactory) -> None:
    pool = make_pool(0, 1)
    conn = pool.getconn()
    query_one(conn, "SELECT 'mine'")
    pid = backend_pid(conn)
    pool.putconn(conn)
    conn = pool.getconn()
    assert last_query(primary, pid) != PING_SQL
    pool.putconn(conn)


def test_session_that_sets_read_only_itself_is_kept_and_reset(
    primary: ReplicatedPair, make_pool: PoolFactory, table: str, caplog: pytest.LogCaptureFixture
) -> None:
    """In an autocommit pool, a view's own SET default_transaction_read_only is not a failover."""
    pool = make_pool(0, 1, configure=autocommit)
    conn = pool.getconn()
    with conn.cursor() as cur:
        cur.execute("SET default_transaction_read_only = on")
    pid = backend_pid(conn)
    pool.putconn(conn)
    # The next user of the connection writes as usual.
    conn = pool.getconn()
    assert backend_pid(conn) == pid
    query_one(conn, f"INSERT INTO {table} VALUES (3) RETURNING n")
    pool.putconn(conn)
    assert warnings_of(caplog) == []


def test_psycopg2_readonly_in_autocommit_is_not_a_failover(
    primary: ReplicatedPair, make_pool: PoolFactory, caplog: pytest.LogCaptureFixture
) -> None:
    pool = make_pool(0, 1)
    conn = pool.getconn()
    conn.autocommit = True
    conn.readonly = True  # psycopg2 sends SET default_transaction_read_only in autocommit
    query_one(conn, "SELECT 1")
    pid = backend_pid(conn)
    pool.putconn(conn)
    conn = pool.getconn()
    assert backend_pid(conn) == pid
    assert query_one(conn, "SHOW default_transaction_read_only") == "off"
    pool.putconn(conn)
    assert warnings_of(caplog) == []


@pytest.mark.parametrize("read_only", [True, False])
def test_pool_opened_on_a_standby_is_not_a_failover(
    pair: ReplicatedPair, app_name: str, read_only: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """A pool pointed at a standby keeps its connections, read-only pool or not."""
    factory = PoolFactory(pair.nodes[1].dsn, app_name)
    try:
        pool = factory(0, 1, read_only=read_only, ping_after=0)
        conn: connection = pool.getconn()
        query_one(conn, "SELECT 1")
        pid = backend_pid(conn)
        pool.putconn(conn)
        conn = pool.getconn()
        assert backend_pid(conn) == pid
        pool.putconn(conn)
    finally:
        factory.close()
    assert warnings_of(caplog) == []


def test_checkout_once_the_server_is_back_is_served_whatever_the_backoff(
    proxy: TcpProxy, pg_dsn: str, app_name: str
) -> None:
    """A checkout that fails fast while the database is down must still see a connection
    attempt made after it began: one made just after a promotion is served, not refused."""
    factory = PoolFactory(via_proxy(pg_dsn, proxy), app_name)
    back = threading.Event()
    failures = 0

    def on_event(event: str, seconds: float) -> None:
        nonlocal failures
        if event == "connect_error":
            failures += 1
            # Once the backoff is at its longest (delays double from 0.1 s), the
            # server comes back right after an attempt failed: the worst moment.
            if failures == 9:
                proxy.pass_through()
                back.set()

    try:
        pool = factory(0, 2, timeout=10)
        pool.add_observer(on_event)
        proxy.drop()  # every connect fails at once

        def ask() -> None:  # attempts are made for waiting checkouts
            while not back.is_set():
                with contextlib.suppress(PoolTimeout):
                    pool.putconn(pool.getconn(timeout=0.05))

        threading.Thread(target=ask, daemon=True).start()
        assert back.wait(30)
        conn = pool.getconn()
        assert query_one(conn, "SELECT 1") == 1
        pool.putconn(conn)
    finally:
        factory.close()


@pytest.mark.parametrize("health_check", [True, False])
def test_a_record_not_verified_since_a_failover_is_pinged(health_check: bool) -> None:
    """Pure policy: pinged before use even with health checks off, once only."""
    rec = ConnectionRecord(cast(connection, None), cast(select.poll, None), (), opened_at=10.0, lifetime=3600)
    policy = HealthPolicy(health_check=health_check, ping_after=None)

    def verdict(verify_before: float) -> Verdict:
        return rec.checkout_verdict(
            20.0, SocketState.QUIET, policy, suspect_before=float("-inf"), generation=0, verify_before=verify_before
        )

    assert verdict(float("-inf")) is Verdict.USE
    assert verdict(15.0) is Verdict.PING  # a failover was detected after it was opened
    rec.verified_at = 16.0  # pinged since, and its server took writes
    assert verdict(15.0) is Verdict.USE
    assert verdict(float("-inf")) is Verdict.USE
