"""Behaviour 6: the database goes down and comes back (a private cluster that
the tests stop, start and restart)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import psycopg2
import pytest
from support.pgcluster import PgCluster
from support.poolkit import PoolFactory, query_one

from flask_pgpool import PoolTimeout

pytestmark = pytest.mark.slow

SECRET = "not-a-real-password-7f3a"


@pytest.fixture
def cluster_pool(pg: PgCluster, app_name: str) -> Iterator[PoolFactory]:
    # The password is ignored by the cluster (trust) but must never be shown.
    factory = PoolFactory(f"{pg.dsn} password={SECRET}", app_name)
    yield factory
    factory.close()


def _consistent(stats: dict[str, int]) -> None:
    assert 0 <= stats["pool_available"] <= stats["pool_size"] <= stats["pool_max"]


def test_server_down_fails_within_timeout_with_backoff_then_recovers(
    pg: PgCluster, cluster_pool: PoolFactory
) -> None:
    pool = cluster_pool(0, 4, timeout=1.0, connect_timeout=2)
    pool.putconn(pool.getconn(timeout=10))
    pg.stop()
    started = time.monotonic()
    with pytest.raises(PoolTimeout) as info:
        pool.getconn()
    assert 1.0 <= time.monotonic() - started < 2.5
    message = str(info.value)
    assert "connect" in message and "connection string (dsn)" in message and info.value.settings[0] == "dsn"
    assert SECRET not in message and SECRET not in repr(pool) and SECRET not in pool.dsn

    # Eight threads keep asking for 3 s: the backoff bounds the attempts.
    attempts_before = pool.get_stats()["connections_num"]
    stop_at = time.monotonic() + 3.0

    def hammer() -> int:
        failures = 0
        while time.monotonic() < stop_at:
            with pytest.raises(PoolTimeout):
                pool.getconn(timeout=0.2)
            failures += 1
        return failures

    with ThreadPoolExecutor(8) as executor:
        failures = sum(executor.map(lambda _: hammer(), range(8), timeout=30))
    attempts = pool.get_stats()["connections_num"] - attempts_before
    assert failures >= 40
    assert 1 <= attempts <= 12, f"{attempts} connection attempts in 3 s while down"
    stats = pool.get_stats()
    assert stats["connections_errors"] >= attempts
    assert stats["requests_waiting"] == 0
    _consistent(stats)

    pg.start()
    conn = pool.getconn(timeout=30)  # the backoff is at most ~2 s here
    assert query_one(conn, "SELECT 1") == 1
    pool.putconn(conn)
    _consistent(pool.get_stats())


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_restart_while_idle(pg: PgCluster, cluster_pool: PoolFactory, mode: str) -> None:
    pool = cluster_pool(2, 4, timeout=10, ping_after=None)
    held = [pool.getconn() for _ in range(4)]
    for conn in held:
        pool.putconn(conn)
    pg.restart(mode=mode)  # type: ignore[arg-type]
    # Every checkout works: each old connection is seen dead and replaced.
    conns = [pool.getconn() for _ in range(4)]
    for conn in conns:
        assert query_one(conn, "SELECT 1") == 1
        assert conn not in held
    for conn in conns:
        pool.putconn(conn)
    stats = pool.get_stats()
    assert stats["connections_lost"] >= 1
    assert stats["returns_bad"] == 0
    assert stats["pool_size"] == stats["pool_available"] <= 4


def test_stop_and_start_while_busy(pg: PgCluster, cluster_pool: PoolFactory) -> None:
    pool = cluster_pool(1, 4, timeout=5, connect_timeout=2)
    stop = threading.Event()
    errors: list[BaseException] = []
    done = [0]

    def worker() -> None:
        while not stop.is_set():
            try:
                conn = pool.getconn(timeout=1)
            except PoolTimeout:
                continue
            try:
                query_one(conn, "SELECT count(*) FROM pg_class, pg_sleep(0.01)")
                done[0] += 1
            except psycopg2.Error:
                pass  # the server went away under the query: expected here
            except BaseException as exc:
                errors.append(exc)
            finally:
                pool.putconn(conn)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(6)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    pg.stop(mode="fast")
    time.sleep(1.0)
    pg.start()
    time.sleep(0.5)
    pg.restart(mode="immediate")
    before = done[0]
    deadline = time.monotonic() + 30
    while done[0] < before + 50 and time.monotonic() < deadline:
        time.sleep(0.1)
    stop.set()
    for thread in threads:
        thread.join(10)
        assert not thread.is_alive()
    assert not errors
    assert done[0] >= before + 50, "the pool did not recover after the restart"
    stats = pool.get_stats()
    assert stats["pool_size"] == stats["pool_available"] <= 4
    assert stats["requests_waiting"] == 0
    # After the server is back, every checkout succeeds.
    conns = [pool.getconn(timeout=10) for _ in range(4)]
    assert all(query_one(conn, "SELECT 1") == 1 for conn in conns)
    for conn in conns:
        pool.putconn(conn)

