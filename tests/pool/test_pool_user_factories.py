"""The pool's own queries (the ping, ``check()``) work whatever rows or connections the user asks for.

A ``cursor_factory`` changes what ``fetchone()`` returns (a list, a dict, a
named tuple); a ``connection_factory`` may refuse ``cursor()`` until it is set
up. Neither may make the pool take a healthy connection for a dead one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import psycopg2.extras
import pytest
from psycopg2.extensions import connection
from support.poolkit import PoolFactory

from flask_pgpool._health import ping


def initialise_logging(conn: connection) -> None:
    if isinstance(conn, psycopg2.extras.LoggingConnection):
        conn.initialize(logging.getLogger("tests.sql"))


# name: (connect_args, configure)
FACTORIES: dict[str, tuple[dict[str, Any], Callable[[connection], None] | None]] = {
    "DictCursor": ({"cursor_factory": psycopg2.extras.DictCursor}, None),
    "RealDictCursor": ({"cursor_factory": psycopg2.extras.RealDictCursor}, None),
    "NamedTupleCursor": ({"cursor_factory": psycopg2.extras.NamedTupleCursor}, None),
    "LoggingConnection": ({"connection_factory": psycopg2.extras.LoggingConnection}, initialise_logging),
    "LoggingConnection-uninitialised": ({"connection_factory": psycopg2.extras.LoggingConnection}, None),
    "MinTimeLoggingConnection": ({"connection_factory": psycopg2.extras.MinTimeLoggingConnection}, initialise_logging),
}


@pytest.fixture(params=list(FACTORIES))
def factory_pool(request: pytest.FixtureRequest, make_pool: PoolFactory) -> Callable[..., Any]:
    connect_args, configure = FACTORIES[request.param]

    def make(minconn: int = 0, maxconn: int = 4, **options: Any) -> Any:
        return make_pool(minconn, maxconn, connect_args=dict(connect_args), configure=configure, **options)

    return make


def test_ping_answers_true_for_a_healthy_connection(factory_pool: Callable[..., Any]) -> None:
    pool = factory_pool()
    conn = pool.getconn()
    try:
        assert ping(conn, 5)
        # The ping leaves the session as it found it.
        assert conn.info.transaction_status == psycopg2.extensions.TRANSACTION_STATUS_IDLE
        assert conn.autocommit is False
    finally:
        pool.putconn(conn)


def test_ping_at_every_checkout_keeps_the_same_connection(factory_pool: Callable[..., Any]) -> None:
    pool = factory_pool(0, 2, ping_after=0, timeout=5)
    first = pool.getconn()
    pool.putconn(first)
    for _ in range(20):
        conn = pool.getconn()
        assert conn is first
        pool.putconn(conn)
    stats = pool.get_stats()
    assert stats["connections_num"] == 1
    assert stats["connections_lost"] == 0


def test_check_keeps_healthy_idle_connections(factory_pool: Callable[..., Any]) -> None:
    pool = factory_pool(0, 3)
    conns = [pool.getconn() for _ in range(3)]
    for conn in conns:
        pool.putconn(conn)
    pool.check()
    stats = pool.get_stats()
    assert stats["connections_lost"] == 0
    assert stats["pool_available"] == 3
    assert not any(conn.closed for conn in conns)
    assert stats["connections_num"] == 3
