"""The pools the engine benchmark compares, each opened with its defaults and a fixed size."""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import flask_pgpool

__all__ = ["CONTENDERS", "REFERENCE", "Contender", "OpenPool"]


@dataclass
class OpenPool:
    """A pool ready to use: ``putconn(getconn())`` is one pair."""

    getconn: Callable[[], Any]
    putconn: Callable[[Any], None]
    close: Callable[[], None]
    #: The pool object itself, for the profile (its lock, its class).
    pool: Any


@dataclass(frozen=True)
class Contender:
    key: str
    label: str
    open: Callable[[str, int], OpenPool]
    #: False: the pool raises instead of waiting when every connection is out.
    waits: bool = True
    #: Why it is in the table, when it is not one of the compared products.
    note: str = ""


def _fill(pool: OpenPool, size: int) -> OpenPool:
    """Open every connection before timing: all pools start full."""
    held = [pool.getconn() for _ in range(size)]
    for conn in held:
        pool.putconn(conn)
    return pool


def _pgpool(**options: Any) -> Callable[[str, int], OpenPool]:
    def open_pool(dsn: str, size: int) -> OpenPool:
        pool = flask_pgpool.ConnectionPool(size, size, dsn, **options)
        return _fill(OpenPool(pool.getconn, pool.putconn, pool.closeall, pool), size)

    return open_pool


def _psycopg_pool(check: bool) -> Callable[[str, int], OpenPool]:
    def open_pool(dsn: str, size: int) -> OpenPool:
        import psycopg_pool  # imported on use: the probe process loads only the pool it runs

        kwargs: dict[str, Any] = {"check": psycopg_pool.ConnectionPool.check_connection} if check else {}
        pool: psycopg_pool.ConnectionPool[Any] = psycopg_pool.ConnectionPool(
            dsn, min_size=size, max_size=size, open=True, **kwargs
        )
        pool.wait()
        return _fill(OpenPool(pool.getconn, pool.putconn, pool.close, pool), size)

    return open_pool


def _queue_pool(pre_ping: bool) -> Callable[[str, int], OpenPool]:
    def open_pool(dsn: str, size: int) -> OpenPool:
        from ..apps.sqlalchemy_app import make_engine

        engine = make_engine(dsn, size, pre_ping)
        # Closing a pooled raw connection returns it (no Python frame of ours in the pair).
        putconn: Callable[[Any], None] = operator.methodcaller("close")
        return _fill(OpenPool(engine.raw_connection, putconn, engine.dispose, engine.pool), size)

    return open_pool


def _threaded(dsn: str, size: int) -> OpenPool:
    from psycopg2.pool import ThreadedConnectionPool

    pool = ThreadedConnectionPool(size, size, dsn)
    return OpenPool(pool.getconn, pool.putconn, pool.closeall, pool)


#: Key -> contender; the order of every table.
CONTENDERS: dict[str, Contender] = {
    c.key: c
    for c in (
        Contender("pgpool", "flask-pgpool (defaults)", _pgpool()),
        Contender(
            "pgpool_nocheck",
            "flask-pgpool (health_check=False)",
            _pgpool(health_check=False),
            note="diagnostic: what the health check costs",
        ),
        Contender("psycopg_pool", "psycopg_pool (defaults)", _psycopg_pool(check=False)),
        Contender("psycopg_pool_check", "psycopg_pool (check=check_connection)", _psycopg_pool(check=True)),
        Contender("queuepool", "SQLAlchemy QueuePool (pre_ping off)", _queue_pool(pre_ping=False)),
        Contender("queuepool_ping", "SQLAlchemy QueuePool (pre_ping on)", _queue_pool(pre_ping=True)),
        Contender(
            "threaded",
            "psycopg2 ThreadedConnectionPool",
            _threaded,
            waits=False,
            note="raises PoolError ('connection pool exhausted') instead of waiting beyond maxconn",
        ),
    )
}

#: Every ratio is against this one.
REFERENCE = "psycopg_pool"
