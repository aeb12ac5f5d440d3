"""Behaviour 1: a checkout beyond maxconn waits its turn instead of failing."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import psycopg2.pool
import pytest
from psycopg2.extensions import connection
from support.poolkit import PoolFactory, query_one, run_in_thread, wait_until

from flask_pgpool import ConnectionPool, PgPoolError, PoolClosed, PoolTimeout, TooManyRequests

# Run under each user configuration of PGPOOL_TEST_MATRIX (see support.userconfigs).
pytestmark = pytest.mark.user_configs


def _waiting(pool: ConnectionPool, count: int) -> Callable[[], bool]:
    return lambda: pool.get_stats()["requests_waiting"] == count


def test_errors_are_psycopg2_pool_errors() -> None:
    for error in (PgPoolError, PoolTimeout, TooManyRequests, PoolClosed):
        assert issubclass(error, psycopg2.pool.PoolError)


def test_more_threads_than_maxconn_are_all_served(make_pool: PoolFactory) -> None:
    pool = make_pool(1, 4, timeout=20)
    served = []

    def request(i: int) -> int:
        conn = pool.getconn()
        try:
            # Hold the connection long enough that the 16 threads overlap.
            value = query_one(conn, "SELECT %s::int FROM pg_sleep(0.02)", (i,))
        finally:
            pool.putconn(conn)
        served.append(value)
        return int(value)

    with ThreadPoolExecutor(16) as executor:
        results = list(executor.map(request, range(96), timeout=60))
    assert results == list(range(96))
    stats = pool.get_stats()
    assert stats["requests_num"] == 96
    assert stats["requests_errors"] == 0
    assert stats["requests_queued"] > 0, "the test did not make requests wait"
    assert stats["connections_num"] <= 4
    assert stats["pool_size"] <= 4


def test_waiters_are_served_first_come_first_served(make_pool: PoolFactory) -> None:
    pool = make_pool(0, 1, timeout=20)
    holder = pool.getconn()
    order: list[int] = []
    waiting = []
    for i in range(5):

        def request(i: int = i) -> None:
            conn = pool.getconn()
            order.append(i)
            pool.putconn(conn)

        waiting.append(run_in_thread(request, name=f"waiter-{i}"))
        # The next one queues only after this one is in line.
        wait_until(_waiting(pool, i + 1), timeout=5, what="waiter in line")
    pool.putconn(holder)
    for result in waiting:
        result(10)
    assert order == [0, 1, 2, 3, 4]


def test_timeout_raises_within_bounds_and_says_what_to_tune(make_pool: PoolFactory) -> None:
    pool = make_pool(0, 2, timeout=1.0)
    held = [pool.getconn(timeout=10), pool.getconn(timeout=10)]
    started = time.monotonic()
    with pytest.raises(PoolTimeout) as info:
        pool.getconn()
    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 2.5
    message = str(info.value)
    # The engine names its options; the Flask extension names its PGPOOL_ keys (tests/extension/test_messages.py).
    assert "maxconn" in message and "timeout" in message and info.value.settings == ("maxconn", "timeout")
    assert "all 2 are in use" in message
    # A per-call timeout overrides the pool's.
    started = time.monotonic()
    with pytest.raises(PoolTimeout):
        pool.getconn(timeout=0.2)
    assert 0.2 <= time.monotonic() - started < 1.5
    stats = pool.get_stats()
    assert stats["requests_errors"] == 2
    assert stats["requests_waiting"] == 0
    for conn in held:
        pool.putconn(conn)
    # The pool still serves after the timeouts: nothing leaked.
    pool.putconn(pool.getconn())
    assert pool.get_stats()["pool_size"] == 2


def test_max_waiting_fails_fast_beyond_the_queue(make_pool: PoolFactory) -> None:
    pool = make_pool(0, 1, timeout=10, max_waiting=2)
    holder = pool.getconn()
    queued = [run_in_thread(lambda: pool.getconn(timeout=10), name=f"queued-{i}") for i in range(2)]
    wait_until(lambda: pool.get_stats()["requests_waiting"] == 2, timeout=5, what="two waiters")
    started = time.monotonic()
    with pytest.raises(TooManyRequests) as info:
        pool.getconn()
    assert time.monotonic() - started < 0.5
    assert "max_waiting" in str(info.value) and info.value.settings[0] == "max_waiting"
    pool.putconn(holder)
    for result in queued:
        pool.putconn(result(10))
    assert pool.get_stats()["requests_errors"] == 1


def test_closeall_fails_the_waiters_with_pool_closed(make_pool: PoolFactory) -> None:
    pool = make_pool(0, 1, timeout=30)
    holder = pool.getconn()
    waiters = [run_in_thread(pool.getconn, name=f"waiter-{i}") for i in range(3)]
    wait_until(lambda: pool.get_stats()["requests_waiting"] == 3, timeout=5, what="three waiters")
    started = time.monotonic()
    pool.closeall()
    for result in waiters:
        with pytest.raises(PoolClosed):
            result(5)
    assert time.monotonic() - started < 5
    with pytest.raises(PoolClosed):
        pool.getconn()
    # The connection in use is closed when it comes back, not before.
    assert not holder.closed
    pool.putconn(holder)
    assert holder.closed
    pool.closeall()  # idempotent


def test_a_waiter_is_handed_the_returned_connection(make_pool: PoolFactory) -> None:
    """A returned connection goes to the first waiter, not back to idle: no reconnect."""
    pool = make_pool(0, 1, timeout=10)
    holder = pool.getconn()
    result = run_in_thread(pool.getconn, name="waiter")
    wait_until(lambda: pool.get_stats()["requests_waiting"] == 1, timeout=5, what="waiter")
    pool.putconn(holder)
    assert result(5) is holder
    assert pool.get_stats()["connections_num"] == 1


def test_max_waiting_does_not_refuse_checkouts_that_can_open_a_connection(make_pool: PoolFactory) -> None:
    pool = make_pool(0, 4, timeout=10, max_waiting=1)
    barrier = threading.Barrier(4)

    def request() -> connection:
        barrier.wait(5)
        return pool.getconn()

    with ThreadPoolExecutor(4) as executor:
        conns = list(executor.map(lambda _: request(), range(4), timeout=30))
    assert len({id(conn) for conn in conns}) == 4
    assert pool.get_stats()["requests_errors"] == 0
    for conn in conns:
        pool.putconn(conn)
