"""Pool events are logged under the ``flask_pgpool`` logger, and reported to observers.

Levels: DEBUG for routine events (a connection opened, idle ones closed), INFO
for what the pool handled by itself (a dead or broken connection discarded, a
failed checkout, which the caller also gets as an exception), WARNING for what
an operator must look at (the server is unreachable, a connection leaked).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from psycopg2.extensions import connection, make_dsn, parse_dsn
from support.netproxy import TcpProxy
from support.poolkit import PoolFactory, upstream_of

from flask_pgpool import PoolTimeout, TooManyRequests

SECRET = "pw-never-logged-9431"


@pytest.fixture
def make_pool(pg_server_dsn: str, app_name: str) -> Iterator[PoolFactory]:
    """Pools on the server itself (not through PgBouncer), closed after the test."""
    factory = PoolFactory(pg_server_dsn, app_name)
    yield factory
    factory.close()


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Callable[..., list[logging.LogRecord]]:
    caplog.set_level(logging.DEBUG, logger="flask_pgpool")

    def records(level: int | None = None, text: str = "") -> list[logging.LogRecord]:
        return [
            r
            for r in caplog.records
            if r.name == "flask_pgpool" and (level is None or r.levelno == level) and text in r.getMessage()
        ]

    return records


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_a_new_connection_is_logged_at_debug(make_pool: PoolFactory, logs: Any) -> None:
    pool = make_pool()
    pool.putconn(pool.getconn())
    assert len(logs(logging.DEBUG, "opened a connection")) == 1
    pool.putconn(pool.getconn())  # reused: nothing new
    assert len(logs(logging.DEBUG, "opened a connection")) == 1
    assert logs(logging.WARNING) == []


def test_a_connection_the_server_closed_is_discarded_at_info(
    make_pool: PoolFactory, logs: Any, admin: connection
) -> None:
    pool = make_pool()
    conn = pool.getconn()
    pid = conn.info.backend_pid
    pool.putconn(conn)
    with admin.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
    assert wait_until(lambda: not _alive(admin, pid))
    fresh = pool.getconn()
    assert fresh.info.backend_pid != pid
    pool.putconn(fresh)
    assert len(logs(logging.INFO, "discarded a connection the server had closed")) == 1


def test_a_broken_connection_given_back_is_discarded_at_info(
    make_pool: PoolFactory, logs: Any
) -> None:
    pool = make_pool()
    conn = pool.getconn()
    conn.close()
    pool.putconn(conn)
    assert len(logs(logging.INFO, "discarded a connection returned broken")) == 1
    assert pool.get_stats()["returns_bad"] == 1


def test_a_checkout_timeout_is_logged_at_info_and_raised(
    make_pool: PoolFactory, logs: Any
) -> None:
    pool = make_pool(maxconn=1, timeout=0.2, name="events")
    held = pool.getconn()
    with pytest.raises(PoolTimeout):
        pool.getconn()
    [record] = logs(logging.INFO, "no connection free within")
    assert "'events'" in record.getMessage() and "after waiting" in record.getMessage()
    pool.putconn(held)


def test_a_rejected_checkout_is_logged_at_info(make_pool: PoolFactory, logs: Any) -> None:
    pool = make_pool(maxconn=1, max_waiting=1, timeout=5)
    held = pool.getconn()
    waiter = threading.Thread(target=lambda: pool.putconn(pool.getconn()))
    waiter.start()
    assert wait_until(lambda: pool.get_stats()["requests_waiting"] == 1)
    with pytest.raises(TooManyRequests):
        pool.getconn()
    pool.putconn(held)
    waiter.join(5)
    assert len(logs(logging.INFO, "requests are already waiting")) == 1


def test_a_leak_is_logged_at_warning_with_where_it_was_checked_out(
    make_pool: PoolFactory, logs: Any
) -> None:
    pool = make_pool(leak_timeout=0.2)

    def checkout_and_forget() -> connection:
        return pool.getconn()

    conn = checkout_and_forget()
    assert wait_until(lambda: bool(logs(logging.WARNING, "checked out for")), timeout=10)
    [record] = logs(logging.WARNING, "checked out for")
    assert "checkout_and_forget" in record.getMessage()
    assert "(leak_timeout)" in record.getMessage()
    pool.putconn(conn)


def test_backoff_warns_once_then_reports_the_recovery(
    make_pool: PoolFactory, logs: Any, pg_server_dsn: str
) -> None:
    params = parse_dsn(pg_server_dsn)
    with TcpProxy(upstream_of(pg_server_dsn)) as proxy:
        proxy.drop()
        dsn = make_dsn(proxy.dsn(), user=params.get("user", "postgres"), dbname=params.get("dbname", "postgres"))
        pool = make_pool(dsn=make_dsn(dsn, password=params.get("password") or SECRET), timeout=0.8, connect_timeout=2)
        with pytest.raises(PoolTimeout):
            pool.getconn()
        failures = logs(text="cannot connect (retrying with backoff)")
        assert len(failures) >= 2  # it retried within the timeout...
        assert [r.levelno for r in failures].count(logging.WARNING) == 1  # ...but warned once
        proxy.pass_through()
        pool.putconn(pool.getconn(timeout=15))
        assert len(logs(logging.INFO, "connected again")) == 1
        pool.closeall()
    assert all(SECRET not in r.getMessage() for r in logs())


def test_observers_see_checkouts_connects_and_failures(make_pool: PoolFactory, logs: Any) -> None:
    pool = make_pool(maxconn=1, timeout=0.2)
    events: list[tuple[str, float]] = []
    pool.add_observer(lambda event, seconds: events.append((event, seconds)))

    def broken(event: str, seconds: float) -> None:
        raise RuntimeError("observer bug")

    pool.add_observer(broken)  # a failing observer must not break the pool
    conn = pool.getconn()
    with pytest.raises(PoolTimeout):
        pool.getconn()
    pool.putconn(conn)
    pool.putconn(pool.getconn())
    names = [e for e, _ in events]
    assert names == ["connect", "checkout", "timeout", "return", "checkout", "return"]
    waited = dict(reversed(events))  # the first of each
    assert waited["timeout"] >= 0.2
    assert 0 <= waited["checkout"] < 5
    assert waited["return"] >= 0.2  # held while the other checkout timed out
    assert logs(logging.ERROR, "observer")  # the broken observer was reported


def _alive(admin: connection, pid: int) -> bool:
    with admin.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,))
        row = cur.fetchone()
    return bool(row and row[0])

