"""Rotating credentials: a DSN or connect-arguments callable asked at every connect, and drain().

The test server trusts every login, so the passwords here are only carried
along: what is tested is which value each new connection was opened with,
that every one of them is masked, and which connections drain() replaces.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from psycopg2.extensions import make_dsn, parse_dsn
from support.poolkit import PoolFactory, backend_pid, query_one, run_in_thread, wait_until

from flask_pgpool import ConnectionPool, PoolTimeout


class Secrets:
    """Hands out password-1, password-2... and records which one each call got."""

    def __init__(self, dsn: str, app_name: str) -> None:
        self.params = {**parse_dsn(dsn), "application_name": app_name}
        self.given: list[str] = []
        self.lock = threading.Lock()

    def next(self) -> str:
        with self.lock:
            self.given.append(f"s3cr3t-{len(self.given) + 1}")
            return self.given[-1]

    def dsn(self) -> str:
        return str(make_dsn(**self.params, password=self.next()))

    def connect_args(self) -> dict[str, Any]:
        return {"password": self.next(), "application_name": self.params["application_name"]}


@pytest.fixture
def secrets(pg_dsn: str, app_name: str) -> Secrets:
    return Secrets(pg_dsn, app_name)


@pytest.fixture
def pools() -> Iterator[Callable[..., ConnectionPool]]:
    """``pools(minconn, maxconn, dsn, **options)``: ConnectionPools closed after the test."""
    made: list[ConnectionPool] = []

    def make(*args: Any, **kwargs: Any) -> ConnectionPool:
        kwargs.setdefault("timeout", 5)
        made.append(ConnectionPool(*args, **kwargs))
        return made[-1]

    yield make
    for pool in made:
        pool.closeall()


@pytest.mark.parametrize("source", ["dsn", "connect_args"])
def test_callable_is_asked_for_every_new_connection(
    secrets: Secrets, pools: Callable[..., ConnectionPool], pg_dsn: str, source: str
) -> None:
    by_dsn = source == "dsn"
    pool = pools(0, 3, secrets.dsn) if by_dsn else pools(0, 3, pg_dsn, connect_args=secrets.connect_args)
    conns = [pool.getconn() for _ in range(3)]
    assert sorted(conn.info.password for conn in conns) == sorted(secrets.given) == ["s3cr3t-1", "s3cr3t-2", "s3cr3t-3"]
    for conn in conns:
        pool.putconn(conn)
    # Reused connections ask for nothing.
    pool.putconn(pool.getconn())
    assert len(secrets.given) == 3
    # Every secret given is masked, in any message the pool shows.
    assert pool.redact("s3cr3t-1 s3cr3t-2 s3cr3t-3") == "*** *** ***"
    assert "s3cr3t" not in pool.dsn + repr(pool)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("dsn", "the DSN callable returned a int, not a connection string"),
        ("connect_args", "the connect-arguments callable returned a list"),
    ],
)
def test_callable_returning_the_wrong_type_says_so(
    pools: Callable[..., ConnectionPool], pg_dsn: str, source: str, message: str
) -> None:
    if source == "dsn":
        pool = pools(0, 1, lambda: 42, timeout=1)
    else:
        pool = pools(0, 1, pg_dsn, connect_args=lambda: ["password"], timeout=1)
    with pytest.raises(PoolTimeout, match=message):
        pool.getconn()


@pytest.mark.no_pgbouncer  # looks at the server's sessions
def test_drain_closes_idle_now_and_in_use_when_returned(
    make_pool: PoolFactory, server_sessions: Callable[..., list[tuple[Any, ...]]]
) -> None:
    pool = make_pool(0, 3)
    conns = [pool.getconn() for _ in range(3)]
    old = {backend_pid(conn) for conn in conns}
    held = conns.pop()
    for conn in conns:
        pool.putconn(conn)

    pool.drain()

    # The idle ones are replaced at once, the one in use stays with its user.
    wait_until(lambda: pool.get_stats()["pool_available"] == 2, timeout=10, what="two new idle connections")
    assert query_one(held, "SELECT 1") == 1
    current = {pid for pid, _ in server_sessions()}
    assert current & old == {backend_pid(held)}
    pool.putconn(held)
    wait_until(lambda: backend_pid(held) not in {pid for pid, _ in server_sessions()}, timeout=10, what="held closed")
    conn = pool.getconn()
    assert backend_pid(conn) not in old
    pool.putconn(conn)
    stats = pool.get_stats()
    assert stats["requests_errors"] == stats["returns_bad"] == 0


def test_drain_retires_a_connection_being_opened(secrets: Secrets, pools: Callable[..., ConnectionPool]) -> None:
    """A connect under way when drain() is called may carry the old secret: it is not handed out."""
    asked = threading.Event()
    release = threading.Event()

    def slow_first_dsn() -> str:
        dsn = secrets.dsn()
        if len(secrets.given) == 1:
            asked.set()
            release.wait(10)
        return dsn

    pool = pools(0, 1, slow_first_dsn)
    checkout = run_in_thread(pool.getconn, name="checkout")
    assert asked.wait(10)
    pool.drain()
    release.set()
    conn = checkout(10)
    assert conn.info.password == "s3cr3t-2"
    pool.putconn(conn)


def test_drain_after_a_shrinking_resize_never_opens_beyond_maxconn(
    make_pool: PoolFactory, server_sessions: Callable[..., list[tuple[Any, ...]]]
) -> None:
    """resize() to fewer connections than are in use, then drain(): the count of
    connections to open must not go negative (which made the pool forget some and
    open more every round)."""
    pool = make_pool(0, 4)
    for _ in range(3):
        held = [pool.getconn() for _ in range(4)]
        pool.resize(0, 2)
        pool.drain()
        for conn in held:
            pool.putconn(conn)
        pool.resize(0, 4)
        stats = pool.get_stats()
        assert stats["pool_available"] <= stats["pool_size"] <= 4
    wait_until(lambda: len(server_sessions()) <= 4, timeout=10, what="at most maxconn server sessions")
    # The pool still counts right: it hands out its four, and no fifth.
    held = [pool.getconn() for _ in range(4)]
    with pytest.raises(PoolTimeout):
        pool.getconn(timeout=0.2)
    for conn in held:
        pool.putconn(conn)
    assert len(server_sessions()) <= 4
