"""Behaviour 2: connections are kept, not reopened on every checkout."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg2.pool
from support.poolkit import PoolFactory, query_one, wait_until

# Fixtures shared by the pool tests.


def _workload(getconn: Callable[[], Any], putconn: Callable[[Any], None]) -> None:
    def request(_: int) -> None:
        conn = getconn()
        try:
            query_one(conn, "SELECT 1 FROM pg_sleep(0.002)")
        finally:
            putconn(conn)

    for i in range(30):  # sequential
        request(i)
    with ThreadPoolExecutor(4) as executor:  # concurrent, never beyond maxconn
        list(executor.map(request, range(120), timeout=60))


def test_minconn_1_keeps_connections_up_to_maxconn(make_pool: PoolFactory, pg_dsn: str) -> None:
    pool = make_pool(1, 4, timeout=20)
    pids: set[int] = set()

    def getconn() -> Any:
        conn = pool.getconn()
        pids.add(conn.info.backend_pid)
        return conn

    _workload(getconn, pool.putconn)
    stats = pool.get_stats()
    assert stats["connections_num"] <= 4
    assert len(pids) <= 4
    assert stats["pool_size"] == stats["pool_available"] <= 4


def _four_at_once(getconn: Callable[[], Any], putconn: Callable[[Any], None], rounds: int = 3) -> set[int]:
    """Backend pids of ``rounds`` bursts of four requests holding a connection at the same moment."""
    pids: set[int] = set()
    for _ in range(rounds):
        held = [getconn() for _ in range(4)]
        pids.update(conn.info.backend_pid for conn in held)
        for conn in held:
            putconn(conn)
    return pids


def test_psycopg2s_own_pool_reconnects_where_ours_does_not(make_pool: PoolFactory, pg_dsn: str, app_name: str) -> None:
    """The contrast: ThreadedConnectionPool closes every connection above minconn when it comes back."""
    # Bursts held together, not threads that may happen to overlap: on a busy
    # machine the threads of _workload may run one after the other, and then
    # psycopg2's pool reuses its one connection too.
    theirs = psycopg2.pool.ThreadedConnectionPool(1, 4, pg_dsn, application_name=app_name)
    try:
        their_pids = _four_at_once(theirs.getconn, theirs.putconn)
    finally:
        theirs.closeall()
    ours = make_pool(1, 4)
    assert len(their_pids) > 4
    assert len(_four_at_once(ours.getconn, ours.putconn)) == 4


def test_idle_connections_above_minconn_close_after_max_idle(make_pool: PoolFactory) -> None:
    pool = make_pool(1, 4, max_idle=0.5)
    held = [pool.getconn() for _ in range(4)]
    for conn in held:
        pool.putconn(conn)
    assert pool.get_stats()["pool_available"] == 4
    wait_until(lambda: pool.get_stats()["pool_size"] == 1, timeout=10, what="surplus idle connections to close")
    assert sum(conn.closed != 0 for conn in held) == 3
    # minconn stays, and works.
    conn = pool.getconn()
    assert query_one(conn, "SELECT 1") == 1
    pool.putconn(conn)


def test_minconn_is_refilled_in_background_once_used(make_pool: PoolFactory) -> None:
    pool = make_pool(3, 5)
    # Nothing is opened before the pool is used.
    assert pool.get_stats()["pool_size"] == 0
    pool.putconn(pool.getconn())
    wait_until(lambda: pool.get_stats()["pool_available"] == 3, timeout=10, what="minconn to be opened")
    # A connection lost below minconn is replaced without a checkout asking for it.
    conn = pool.getconn()
    pool.putconn(conn, close=True)
    wait_until(lambda: pool.get_stats()["pool_available"] == 3, timeout=10, what="minconn to be refilled")
    assert pool.get_stats()["connections_num"] == 4
