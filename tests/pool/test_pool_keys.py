"""Keyed checkouts, as psycopg2's pools have them: one connection per key."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from psycopg2.extensions import connection
from support.poolkit import PoolFactory, query_one


def test_same_key_same_connection(make_pool: PoolFactory) -> None:
    pool = make_pool(0, 2)
    conn = pool.getconn("job")
    assert pool.getconn("job") is conn
    assert pool.getconn("other") is not conn
    pool.putconn(key="job")
    pool.putconn(pool.getconn("other"), key="other")
    assert pool.get_stats()["pool_available"] == 2


def test_concurrent_first_checkouts_of_one_key_share_one_connection(make_pool: PoolFactory) -> None:
    """Threads asking for the same key at once on a fresh pool all get the
    same connection, and no slot is lost once it is returned."""
    pool = make_pool(0, 4, timeout=10)
    start = threading.Barrier(4)

    def take(_: int) -> connection:
        start.wait(5)
        return pool.getconn("shared")

    with ThreadPoolExecutor(4) as executor:
        got = list(executor.map(take, range(4), timeout=30))
    assert len({id(conn) for conn in got}) == 1
    pool.putconn(got[0], key="shared")
    stats = pool.get_stats()
    assert stats["pool_size"] == stats["pool_available"], stats
    # Every slot can still be used at once.
    held = [pool.getconn(timeout=5) for _ in range(4)]
    assert all(query_one(conn, "SELECT 1") == 1 for conn in held)
    for conn in held:
        pool.putconn(conn)
    assert pool.get_stats()["pool_available"] == pool.get_stats()["pool_size"]
