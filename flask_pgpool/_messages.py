"""The errors a checkout raises, worded for the person who must fix it: what
happened and which setting to change (named through the pool's ``label``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._errors import DatabaseUnavailable, PoolClosed, PoolTimeout, TooManyRequests

if TYPE_CHECKING:
    from ._pool import ConnectionPool
    from ._state import ProcessState

__all__ = ["closed_error", "timeout_error", "too_many_error", "wait_error"]


def closed_error(pool: ConnectionPool) -> PoolClosed:
    return PoolClosed(f"pool {pool.name!r} is closed", pool=pool.name)


def too_many_error(pool: ConnectionPool) -> TooManyRequests:
    label = pool._label
    return TooManyRequests(
        f"pool {pool.name!r}: {pool.max_waiting} requests are already waiting for a connection "
        f"({label('max_waiting')}); raise it, raise {label('maxconn')}, or send fewer requests at once",
        pool=pool.name,
        settings=("max_waiting", "maxconn"),
    )


def wait_error(pool: ConnectionPool, state: ProcessState, limit: float, *, down: bool) -> PoolTimeout:
    """Under the lock: the error of a checkout that gives up, saying why and what to tune."""
    label = pool._label
    if down and state.backoff.last_error:
        return DatabaseUnavailable(
            f"pool {pool.name!r}: could not connect to the database: {state.backoff.last_error}. "
            f"Check that the server is up and that the connection string ({label('dsn')}) is right",
            pool=pool.name,
            settings=("dsn",),
        )
    return timeout_error(pool, state, limit)


def timeout_error(pool: ConnectionPool, state: ProcessState, limit: float) -> PoolTimeout:
    label = pool._label
    # Name the setting only when the limit came from it, not from getconn(timeout=...).
    within = f"{limit:g} s" + (f" ({label('timeout')})" if limit == pool.timeout else "")
    if state.backoff.active and state.backoff.last_error:
        return PoolTimeout(
            f"pool {pool.name!r}: could not connect to the database within {within}: "
            f"{state.backoff.last_error}. Check that the server is up and that the connection "
            f"string ({label('dsn')}) is right",
            pool=pool.name,
            settings=("dsn", "timeout"),
        )
    if state.opening and len(state.records) < pool.maxconn:
        return PoolTimeout(
            f"pool {pool.name!r}: no connection within {within}: a new connection is still being "
            f"opened; the server or the network is slow to answer ({label('connect_timeout')})",
            pool=pool.name,
            settings=("connect_timeout", "timeout"),
        )
    return PoolTimeout(
        f"pool {pool.name!r}: no connection free within {within}; all {pool.maxconn} are in use. "
        f"Raise {label('maxconn')} or {label('timeout')}, or find the requests that hold connections for long",
        pool=pool.name,
        settings=("maxconn", "timeout"),
    )
