"""Behaviours 4 and 5: never hand out a dead connection, without paying a round
trip for a healthy one; lifetimes with jitter."""

from __future__ import annotations

import time
from typing import Any

import psycopg2
import pytest
from psycopg2.extensions import connection
from support.netproxy import TcpProxy
from support.poolkit import PoolFactory, backend_pid, query_one, terminate, via_proxy, wait_until

from flask_pgpool._health import ping as real_ping

# Run under each user configuration of PGPOOL_TEST_MATRIX (see support.userconfigs).
pytestmark = pytest.mark.user_configs


def _settled(proxy: TcpProxy) -> tuple[int, int]:
    """The proxy's byte counters once nothing is in flight any more."""
    last = (-1, -1)
    while True:
        now = (proxy.bytes_up, proxy.bytes_down)
        if now == last:
            return now
        last = now
        time.sleep(0.1)


def test_healthy_recent_checkout_adds_no_round_trip(make_pool: PoolFactory, proxy: TcpProxy, pg_dsn: str) -> None:
    pool = make_pool(0, 2, dsn=via_proxy(pg_dsn, proxy), ping_after=30)
    conn = pool.getconn()
    query_one(conn, "SELECT 1")
    pool.putconn(conn)
    before = _settled(proxy)
    for _ in range(50):
        again = pool.getconn()
        assert again is conn
        pool.putconn(again)
    # Not one byte went to the server or came back.
    assert _settled(proxy) == before
    # ...while a query is visible on the wire (the counters do count).
    conn = pool.getconn()
    query_one(conn, "SELECT 1")
    pool.putconn(conn)
    after = _settled(proxy)
    assert after[0] > before[0] and after[1] > before[1]


def test_connection_idle_longer_than_ping_after_is_pinged(
    make_pool: PoolFactory, proxy: TcpProxy, pg_dsn: str
) -> None:
    pool = make_pool(0, 2, dsn=via_proxy(pg_dsn, proxy), ping_after=0.3)
    conn = pool.getconn()
    pool.putconn(conn)
    time.sleep(0.5)
    before = _settled(proxy)
    assert pool.getconn() is conn
    up, down = _settled(proxy)
    assert up > before[0] and down > before[1], "no ping went over the wire"
    pool.putconn(conn)


@pytest.mark.no_pgbouncer  # kills or configures the server session itself
def test_idle_connection_killed_by_the_server_is_replaced(
    make_pool: PoolFactory, admin: connection
) -> None:
    pool = make_pool(0, 2)
    conn = pool.getconn()
    dead_pid = backend_pid(conn)
    pool.putconn(conn)
    terminate(admin, dead_pid)
    fresh = pool.getconn()
    assert backend_pid(fresh) != dead_pid
    assert query_one(fresh, "SELECT 1") == 1
    pool.putconn(fresh)
    stats = pool.get_stats()
    assert stats["connections_lost"] == 1
    assert stats["pool_size"] == 1
    assert conn.closed


@pytest.mark.no_pgbouncer  # kills or configures the server session itself
def test_idle_session_timeout_kills_are_detected(make_pool: PoolFactory, admin: connection) -> None:
    if admin.server_version < 140000:
        pytest.skip("idle_session_timeout needs PostgreSQL 14")
    pool = make_pool(0, 3, connect_args={"options": "-c idle_session_timeout=1000"}, ping_after=None)
    held = [pool.getconn() for _ in range(3)]
    pids = {backend_pid(c) for c in held}
    for conn in held:
        pool.putconn(conn)

    def all_gone() -> bool:
        with admin.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (list(pids),))
            row = cur.fetchone()
        return row is not None and row[0] == 0

    wait_until(all_gone, timeout=10, what="idle_session_timeout to end the sessions")
    conn = pool.getconn()
    assert backend_pid(conn) not in pids
    assert query_one(conn, "SELECT 1") == 1
    pool.putconn(conn)
    assert pool.get_stats()["connections_lost"] == 3


@pytest.mark.no_pgbouncer  # kills or configures the server session itself
def test_after_a_dead_connection_older_idle_ones_are_pinged(
    make_pool: PoolFactory, admin: connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = make_pool(0, 3, ping_after=None)
    older, newer = pool.getconn(), pool.getconn()
    pool.putconn(older)
    time.sleep(0.01)
    pool.putconn(newer)  # the next checkout takes the most recently used
    pinged: list[int] = []

    def spy(conn: connection, timeout: float) -> bool:
        pinged.append(backend_pid(conn))
        return real_ping(conn, timeout)

    monkeypatch.setattr("flask_pgpool._checkout.ping", spy)
    terminate(admin, backend_pid(newer))
    got = pool.getconn()
    assert got is older
    # The older connection was idle since before the dead one: it is suspect.
    assert pinged == [backend_pid(older)]
    pool.putconn(got)
    # Once used again it is trusted again: no ping.
    pool.putconn(pool.getconn())
    assert pinged == [backend_pid(older)]


@pytest.mark.no_pgbouncer  # kills or configures the server session itself
def test_connection_killed_while_in_use_frees_its_slot(make_pool: PoolFactory, admin: connection) -> None:
    pool = make_pool(0, 1, timeout=2)
    conn = pool.getconn()
    terminate(admin, backend_pid(conn))
    with pytest.raises(psycopg2.OperationalError):
        query_one(conn, "SELECT 1")
    pool.putconn(conn)
    assert pool.get_stats()["returns_bad"] == 1
    assert pool.get_stats()["pool_size"] == 0
    # Killed without the user noticing: returned with nothing to roll back, it
    # is found dead by the next checkout's socket check (one system call per
    # checkout, none on return), and never handed out.
    conn = pool.getconn()
    terminate(admin, backend_pid(conn))
    pool.putconn(conn)
    fresh = pool.getconn()  # the single slot serves a new connection
    assert fresh is not conn and conn.closed
    assert query_one(fresh, "SELECT 1") == 1
    pool.putconn(fresh)
    stats = pool.get_stats()
    assert stats["connections_lost"] == 1 and stats["returns_bad"] == 1
    assert stats["pool_size"] == 1


def test_max_lifetime_is_enforced_at_return(make_pool: PoolFactory) -> None:
    pool = make_pool(0, 2, max_lifetime=0.5)
    conn = pool.getconn()
    time.sleep(0.7)
    pool.putconn(conn)
    assert conn.closed
    assert pool.get_stats()["pool_size"] == 0
    assert pool.get_stats()["returns_bad"] == 0


def test_max_lifetime_is_enforced_at_checkout(make_pool: PoolFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    pool = make_pool(0, 2, max_lifetime=0.5)
    # Keep the housekeeper from closing it first: the checkout alone must refuse it.
    monkeypatch.setattr("flask_pgpool._housekeeper._interval", lambda pool: 60.0)
    conn = pool.getconn()
    pool.putconn(conn)
    time.sleep(0.7)
    fresh = pool.getconn()
    assert fresh is not conn
    assert conn.closed
    pool.putconn(fresh)
    assert pool.get_stats()["connections_lost"] == 0  # expiry is not a loss


def test_lifetimes_have_jitter(make_pool: PoolFactory) -> None:
    pool = make_pool(8, 8, max_lifetime=100)
    pool.putconn(pool.getconn())
    wait_until(lambda: pool.get_stats()["pool_available"] == 8, timeout=10, what="8 connections")
    records: list[Any] = list(pool._state.records.values())
    lifetimes = [record.expires - record.opened_at for record in records]
    assert all(89.9 <= t <= 100.01 for t in lifetimes), lifetimes
    assert max(lifetimes) - min(lifetimes) > 0.5, "connections opened together expire together"


@pytest.mark.no_pgbouncer  # kills or configures the server session itself
def test_health_check_off_skips_the_socket_check(make_pool: PoolFactory, admin: connection) -> None:
    """With health_check=False a dead idle connection is handed out (the user asked)."""
    pool = make_pool(0, 1, health_check=False)
    conn = pool.getconn()
    pool.putconn(conn)
    terminate(admin, backend_pid(conn))
    assert pool.getconn() is conn
    with pytest.raises(psycopg2.OperationalError):
        query_one(conn, "SELECT 1")
    pool.putconn(conn)
