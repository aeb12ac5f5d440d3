"""Behaviours 9 and 10: leak warnings, truthful stats, resize() and check()."""

from __future__ import annotations

import logging
import threading
import time
import traceback
from typing import Any

import pytest
from psycopg2.extensions import connection
from support.netproxy import TcpProxy
from support.poolkit import PoolFactory, backend_pid, query_one, run_in_thread, terminate, via_proxy, wait_until

from flask_pgpool import STATS_KEYS, PoolTimeout, TooManyRequests

# Fixtures shared by the pool tests.


def checkout_for_a_while(pool: object) -> connection:
    """A named function, so the warning's stack can be recognised."""
    return pool.getconn()  # type: ignore[attr-defined, no-any-return]


def test_leak_timeout_warns_with_the_checkout_stack(make_pool: PoolFactory, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="flask_pgpool")
    pool = make_pool(0, 2, leak_timeout=0.3)
    conn = checkout_for_a_while(pool)

    def warned() -> bool:
        return any("leak_timeout" in r.getMessage() for r in caplog.records)

    wait_until(warned, timeout=10, what="the leak warning")
    message = next(r.getMessage() for r in caplog.records if "leak_timeout" in r.getMessage())
    assert "(leak_timeout)" in message
    assert "checkout_for_a_while" in message and "test_pool_stats.py" in message
    pool.putconn(conn)
    # One warning per checkout, not one per housekeeping round.
    count = sum("leak_timeout" in r.getMessage() for r in caplog.records)
    assert count == 1


def test_no_leak_warning_by_default(make_pool: PoolFactory, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="flask_pgpool")
    pool = make_pool(0, 1, max_idle=0.2)  # a fast housekeeper
    conn = pool.getconn()
    time.sleep(0.5)  # many housekeeping rounds
    pool.putconn(conn)
    assert not [r for r in caplog.records if "leak" in r.getMessage()]


@pytest.mark.no_pgbouncer  # kills or configures the server session itself
def test_every_stats_key_counts_truthfully(make_pool: PoolFactory, admin: connection) -> None:
    pool = make_pool(0, 2, timeout=0.3, max_waiting=1)
    stats = pool.get_stats()
    assert set(stats) == set(STATS_KEYS)
    assert stats == dict.fromkeys(STATS_KEYS, 0) | {"pool_min": 0, "pool_max": 2}

    a = pool.getconn(timeout=10)  # request 1: a new connection
    b = pool.getconn(timeout=10)  # request 2: a new connection
    waiter = run_in_thread(lambda: pool.getconn(timeout=10), name="waiter")  # request 3: queued
    wait_until(lambda: pool.get_stats()["requests_waiting"] == 1, timeout=5, what="a waiter")
    with pytest.raises(TooManyRequests):
        pool.getconn()  # request 4: the queue is full
    time.sleep(0.3)
    pool.putconn(a)  # handed to the waiter
    assert waiter(5) is a
    with pytest.raises(PoolTimeout):
        pool.getconn()  # request 5: times out, nothing free
    query_one(b, "SELECT 1")
    terminate(admin, backend_pid(b))
    pool.putconn(b)  # returned broken
    pool.putconn(a)
    terminate(admin, backend_pid(a))
    c = pool.getconn(timeout=10)  # request 6: a is found dead, c is new
    pool.putconn(c)

    stats = pool.get_stats()
    assert stats["pool_min"] == 0
    assert stats["pool_max"] == 2
    assert stats["pool_size"] == 1
    assert stats["pool_available"] == 1
    assert stats["requests_waiting"] == 0
    assert stats["requests_num"] == 6
    assert stats["requests_queued"] == 2  # the waiter and the one that timed out
    assert stats["requests_wait_ms"] >= 300  # the served waiter's wait
    assert stats["requests_errors"] == 2
    assert stats["returns_bad"] == 1
    assert stats["connections_num"] == 3
    assert stats["connections_ms"] >= 0
    assert stats["connections_errors"] == 0
    assert stats["connections_lost"] == 1

    popped = pool.pop_stats()
    assert popped == stats
    after = pool.get_stats()
    assert all(after[key] == 0 for key in STATS_KEYS[5:])
    assert after["pool_size"] == 1  # gauges are not reset


def test_resize_up_serves_waiters_and_down_closes_surplus(make_pool: PoolFactory) -> None:
    pool = make_pool(0, 1, timeout=10)
    first = pool.getconn()
    waiter = run_in_thread(pool.getconn, name="waiter")
    wait_until(lambda: pool.get_stats()["requests_waiting"] == 1, timeout=5, what="a waiter")
    pool.resize(0, 3)  # the waiter gets a new connection without anyone returning one
    second = waiter(5)
    third = pool.getconn()
    assert len({id(first), id(second), id(third)}) == 3
    assert pool.get_stats()["pool_size"] == 3
    pool.putconn(third)
    pool.resize(0, 1)  # the idle one closes now, the ones in use when returned
    assert third.closed
    assert pool.get_stats()["pool_size"] == 2
    pool.putconn(second)
    assert second.closed
    pool.putconn(first)
    assert not first.closed
    stats = pool.get_stats()
    assert stats["pool_size"] == stats["pool_available"] == 1
    assert stats["pool_max"] == 1
    pool.resize(2, 2)  # minconn up: refilled in the background
    wait_until(lambda: pool.get_stats()["pool_available"] == 2, timeout=10, what="minconn refill")


@pytest.mark.no_pgbouncer  # kills or configures the server session itself
def test_check_replaces_dead_idle_connections(make_pool: PoolFactory, admin: connection) -> None:
    pool = make_pool(0, 3)
    conns = [pool.getconn() for _ in range(3)]
    for conn in conns:
        pool.putconn(conn)
    terminate(admin, backend_pid(conns[0]), backend_pid(conns[1]))
    pool.check()
    stats = pool.get_stats()
    assert stats["connections_lost"] == 2
    assert conns[0].closed and conns[1].closed and not conns[2].closed
    assert stats["pool_size"] >= 1
    # Every connection handed out now works.
    fresh = [pool.getconn() for _ in range(3)]
    assert all(query_one(conn, "SELECT 1") == 1 for conn in fresh)
    for conn in fresh:
        pool.putconn(conn)


def test_check_during_a_shrinking_resize_keeps_within_maxconn(
    make_pool: PoolFactory, proxy: TcpProxy, pg_dsn: str
) -> None:
    pool = make_pool(0, 4, dsn=via_proxy(pg_dsn, proxy), timeout=10)
    held = [pool.getconn() for _ in range(4)]
    for conn in held:
        pool.putconn(conn)
    proxy.slow(0.2)  # each ping of check() takes a while
    checking = run_in_thread(pool.check, name="check")
    wait_until(lambda: pool.get_stats()["pool_available"] == 0, timeout=5, what="check() to take the idle ones")
    pool.resize(0, 1)
    checking(30)
    proxy.pass_through()
    stats = pool.get_stats()
    assert stats["pool_size"] <= 1 and stats["pool_available"] <= 1, stats
    assert sum(not conn.closed for conn in held) <= 1


def test_leak_detection_captures_the_stack_outside_the_lock(
    make_pool: PoolFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With leak_timeout set, a slow stack capture does not hold up other threads."""
    pool = make_pool(0, 2, leak_timeout=60)
    pool.putconn(pool.getconn())
    real_extract = traceback.extract_stack
    capturing = threading.Event()

    def slow_extract(*args: Any, **kwargs: Any) -> traceback.StackSummary:
        capturing.set()
        time.sleep(0.5)
        return real_extract(*args, **kwargs)

    monkeypatch.setattr(traceback, "extract_stack", slow_extract)
    checkout = run_in_thread(pool.getconn, name="checkout")
    assert capturing.wait(5)
    started = time.monotonic()
    pool.get_stats()  # needs the pool's lock
    assert time.monotonic() - started < 0.3, "the pool's lock was held while the stack was captured"
    pool.putconn(checkout(5))
