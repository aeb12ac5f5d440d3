"""Behaviours 3 and 4 on a bad network: nothing slow under the lock, and a cut
network fails a checkout within its timeout instead of hanging it."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import pytest
from support.netproxy import TcpProxy
from support.poolkit import PoolFactory, query_one, run_in_thread, via_proxy, wait_until

from flask_pgpool import ConnectionPool, DatabaseUnavailable, PoolTimeout
from flask_pgpool._checkout import FAIL_FAST
from flask_pgpool._credentials import DsnSource

# Fixtures shared by the pool tests.


def test_a_hanging_connect_blocks_no_other_checkout_or_return(
    make_pool: PoolFactory, proxy: TcpProxy, pg_dsn: str
) -> None:
    pool = make_pool(0, 3, dsn=via_proxy(pg_dsn, proxy), connect_timeout=3, timeout=10)
    warm = pool.getconn()
    pool.putconn(warm)
    held = pool.getconn()
    # New connections now hang; the open one is idle-in-hand and needs no traffic.
    proxy.blackhole()
    waiter = run_in_thread(pool.getconn, name="needs-a-new-connection")
    wait_until(lambda: pool.get_stats()["requests_waiting"] == 1, timeout=5, what="the checkout to wait")
    assert pool.get_stats()["pool_size"] == 2  # one connection is being opened

    started = time.monotonic()
    pool.putconn(held)  # goes straight to the waiter: not after the connect
    assert waiter(2) is held
    pool.putconn(held)
    assert pool.getconn() is held
    pool.putconn(held)
    pool.get_stats()
    assert time.monotonic() - started < 2.0  # the connect alone may take 3 s
    proxy.pass_through()


def test_dropped_network_fails_checkouts_within_timeout_then_recovers(
    make_pool: PoolFactory, proxy: TcpProxy, pg_dsn: str
) -> None:
    pool = make_pool(0, 2, dsn=via_proxy(pg_dsn, proxy), timeout=1.5, connect_timeout=2)
    conn = pool.getconn(timeout=10)
    pool.putconn(conn)
    proxy.drop()
    started = time.monotonic()
    # Once a connect has failed and nothing is open, checkouts do not wait their whole timeout.
    with pytest.raises(DatabaseUnavailable) as info:
        pool.getconn()
    elapsed = time.monotonic() - started
    assert elapsed < 3.5
    assert "could not connect" in str(info.value)
    stats = pool.get_stats()
    assert stats["connections_lost"] == 1
    assert stats["connections_errors"] >= 1
    proxy.pass_through()
    fresh = pool.getconn(timeout=10)  # the backoff is short at first
    assert query_one(fresh, "SELECT 1") == 1
    pool.putconn(fresh)


def test_blackholed_network_does_not_hang_a_checkout_that_pings(
    make_pool: PoolFactory, proxy: TcpProxy, pg_dsn: str
) -> None:
    pool = make_pool(0, 2, dsn=via_proxy(pg_dsn, proxy), timeout=2, ping_after=0.2, connect_timeout=8)
    conn = pool.getconn(timeout=10)
    pool.putconn(conn)
    time.sleep(0.3)  # old enough to be pinged
    proxy.blackhole()
    started = time.monotonic()
    result = run_in_thread(pool.getconn, name="checkout-through-blackhole")
    with pytest.raises(PoolTimeout):
        result(10)
    elapsed = time.monotonic() - started
    assert 2 <= elapsed < 5, elapsed  # not the 8 s of a connect
    assert conn.closed  # the ping's watchdog broke it; it is gone
    assert pool.get_stats()["connections_lost"] == 1
    proxy.pass_through()
    fresh = pool.getconn(timeout=10)
    assert query_one(fresh, "SELECT 1") == 1
    pool.putconn(fresh)


def test_slow_network_costs_a_healthy_checkout_nothing(
    make_pool: PoolFactory, proxy: TcpProxy, pg_dsn: str
) -> None:
    pool = make_pool(0, 2, dsn=via_proxy(pg_dsn, proxy), ping_after=1.0)
    conn = pool.getconn()
    pool.putconn(conn)
    proxy.slow(0.25)
    started = time.monotonic()
    for _ in range(20):
        pool.putconn(pool.getconn())
    assert time.monotonic() - started < 2.0  # 20 round trips would take 10 s
    time.sleep(1.1)
    started = time.monotonic()
    again = pool.getconn()  # idle longer than ping_after: one slow ping
    elapsed = time.monotonic() - started
    assert again is conn
    assert 0.5 <= elapsed < 4
    pool.putconn(again)
    proxy.pass_through()


def test_checkout_gives_up_at_its_timeout_while_a_connect_hangs(
    make_pool: PoolFactory, proxy: TcpProxy, pg_dsn: str
) -> None:
    proxy.blackhole()
    pool = make_pool(0, 2, dsn=via_proxy(pg_dsn, proxy), timeout=1, connect_timeout=10)
    started = time.monotonic()
    with pytest.raises(PoolTimeout) as info:
        pool.getconn()
    elapsed = time.monotonic() - started
    assert 1 <= elapsed < 4, "the checkout waited for the connect, not for its own timeout"
    assert "still being opened" in str(info.value) and "connect_timeout" in str(info.value)
    # The connect goes on in the background; once the network heals it is used.
    proxy.pass_through()
    conn = pool.getconn(timeout=10)
    assert query_one(conn, "SELECT 1") == 1
    pool.putconn(conn)
    assert pool.get_stats()["connections_num"] == 1


def test_a_ping_that_does_not_fit_the_time_left_does_not_kill_a_connection(
    make_pool: PoolFactory, proxy: TcpProxy, pg_dsn: str
) -> None:
    """ping_after=0 on a network 80 ms away: a checkout with less time left
    than a round trip still gives its ping long enough for the network,
    instead of cutting it short and killing a healthy connection."""
    pool = make_pool(0, 1, dsn=via_proxy(pg_dsn, proxy), timeout=10, ping_after=0)
    conn = pool.getconn()
    pool.putconn(conn)
    proxy.slow(0.04)
    for _ in range(3):
        got = pool.getconn(timeout=0.05)  # less time than one round trip
        assert got is conn
        pool.putconn(got)
    proxy.pass_through()
    assert query_one(conn, "SELECT 1") == 1
    stats = pool.get_stats()
    assert stats["connections_lost"] == 0, stats
    assert stats["connections_num"] == 1


@pytest.fixture
def users_wait_callback() -> Iterator[None]:
    """psycopg2's wait_select set as the wait callback, as an app may do (it waits without a limit)."""
    import psycopg2.extensions
    import psycopg2.extras

    before = psycopg2.extensions.get_wait_callback()
    psycopg2.extensions.set_wait_callback(psycopg2.extras.wait_select)
    try:
        yield
    finally:
        psycopg2.extensions.set_wait_callback(before)


def test_a_blackholed_network_ends_pings_and_connects_in_time_through_the_users_wait_callback(
    users_wait_callback: None, make_pool: PoolFactory, proxy: TcpProxy, pg_dsn: str
) -> None:
    pool = make_pool(0, 2, dsn=via_proxy(pg_dsn, proxy), timeout=1, connect_timeout=2)
    conn = pool.getconn(timeout=10)
    pool.putconn(conn)
    proxy.blackhole()
    # The ping's watchdog (2 s: connect_timeout) ends the wait the callback would never end.
    started = time.monotonic()
    pool.check()
    assert time.monotonic() - started < 6
    assert conn.closed and pool.get_stats()["pool_size"] == 0
    # A connect through the blackhole ends at its connect_timeout and gives its slot back.
    with pytest.raises(PoolTimeout):
        pool.getconn()
    wait_until(lambda: pool.get_stats()["connections_errors"] >= 1, timeout=8, what="the connect to give up")
    wait_until(lambda: pool.get_stats()["pool_size"] == 0, timeout=2, what="the slot to be free")
    proxy.pass_through()
    fresh = pool.getconn(timeout=10)
    assert query_one(fresh, "SELECT 1") == 1
    pool.putconn(fresh)


def _down_then_silent(make_pool: PoolFactory, proxy: TcpProxy, dsn: DsnSource, **options: float) -> ConnectionPool:
    """A pool whose connects through ``proxy`` have failed (the backoff is on),
    then a path that answers nothing: the next connect hangs until its connect_timeout."""
    pool = make_pool(0, 2, dsn=dsn, **options)  # type: ignore[arg-type]  # a DSN function, called per connect
    proxy.drop()
    with pytest.raises(DatabaseUnavailable):
        pool.getconn()
    proxy.blackhole()
    return pool


def test_a_connect_begun_before_the_wait_does_not_make_it_give_up(
    make_pool: PoolFactory, proxy: TcpProxy, pg_dsn: str
) -> None:
    """Fail-fast needs proof from an attempt begun during the wait: an older
    attempt that fails says nothing of the server as the wait finds it."""
    target = [via_proxy(pg_dsn, proxy)]
    pool = _down_then_silent(make_pool, proxy, lambda: target[0], timeout=20, connect_timeout=20)
    first = run_in_thread(pool.getconn, name="first-in-line")
    wait_until(lambda: pool.get_stats()["pool_size"] == 1, timeout=5, what="a connect to start")
    second = run_in_thread(pool.getconn, name="second-in-line")
    wait_until(lambda: pool.get_stats()["requests_waiting"] == 2, timeout=5, what="the second checkout to wait")
    # Past the fail-fast delay of the second checkout: nothing but proof may end it now.
    time.sleep(FAIL_FAST + 0.5)
    target[0] = pg_dsn  # the next connects go straight to the server...
    proxy.drop()  # ...and the one begun before the second checkout fails
    conn = second(20)
    assert query_one(conn, "SELECT 1") == 1
    pool.putconn(conn)
    # The first checkout began before that connect: its failure is proof
    # enough for it (unless, on a slow machine, the next connect beat it).
    with contextlib.suppress(DatabaseUnavailable):
        pool.putconn(first(20))


def test_a_timeout_while_a_connect_is_in_flight_does_not_blame_the_dsn(
    make_pool: PoolFactory, proxy: TcpProxy, pg_dsn: str
) -> None:
    """Connects failed before, but the one under way when the checkout gives up
    has not: nothing proves the server unreachable, and the message says what
    happened and what to tune."""
    pool = _down_then_silent(make_pool, proxy, via_proxy(pg_dsn, proxy), timeout=2, connect_timeout=20)
    started = time.monotonic()
    with pytest.raises(PoolTimeout) as info:
        pool.getconn()
    assert 2 <= time.monotonic() - started < 5
    message = str(info.value)
    assert not isinstance(info.value, DatabaseUnavailable), message
    assert "connection string" not in message and "dsn" not in info.value.settings, message
    assert "within 2 s (timeout)" in message and "1 connect" in message and "still under way" in message, message
    assert "none begun during the wait has failed" in message, message
    assert info.value.settings == ("timeout", "connect_timeout"), message
    proxy.pass_through()
    conn = pool.getconn(timeout=20)  # the connect under way goes through once the path is back
    pool.putconn(conn)
