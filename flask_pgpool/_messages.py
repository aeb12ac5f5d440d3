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


def wait_error(pool: ConnectionPool, state: ProcessState, limit: float, *, since: float) -> PoolTimeout:
    """Under the lock: the error of a checkout, waiting since ``since``, that gives up: why, and what to tune."""
    label = pool._label
    error = _last_error(state)
    if error and not state.records and state.backoff.failed_since(since):
        return DatabaseUnavailable(
            f"pool {pool.name!r}: could not connect to the database: {error} "
            f"Check that the server is up and that the connection string ({label('dsn')}) is right",
            pool=pool.name,
            settings=("dsn",),
        )
    return timeout_error(pool, state, limit, since=since)


def timeout_error(pool: ConnectionPool, state: ProcessState, limit: float, *, since: float) -> PoolTimeout:
    """Under the lock: the error of a checkout that began waiting at ``since`` and reached its limit.

    The server or its address is blamed only when a connect begun during the
    wait failed: a connect still under way on a silent path proves nothing.
    """
    label = pool._label
    # Name the setting only when the limit came from it, not from getconn(timeout=...).
    within = f"{limit:g} s" + (f" ({label('timeout')})" if limit == pool.timeout else "")
    error = _last_error(state)
    if error and state.backoff.failed_since(since):
        return PoolTimeout(
            f"pool {pool.name!r}: could not connect to the database within {within}: "
            f"{error} Check that the server is up and that the connection "
            f"string ({label('dsn')}) is right",
            pool=pool.name,
            settings=("dsn", "timeout"),
        )
    earlier = f" An earlier connect failed: {error}" if error else ""
    if state.opening and len(state.records) < pool.maxconn:
        connects = f"{state.opening} connect{'s' if state.opening > 1 else ''}"
        connect_timeout = pool._connector.connect_timeout
        gives_up = f" after {connect_timeout} s" if connect_timeout else ""
        return PoolTimeout(
            f"pool {pool.name!r}: no connection within {within}: a new connection is still being "
            f"opened ({connects} still under way, none begun during the wait has failed): the server or "
            f"the network is slow to answer, or the path to it is silent.{earlier} A connect gives up"
            f"{gives_up} ({label('connect_timeout')}): raise {label('timeout')} to wait for it, or "
            f"lower {label('connect_timeout')}",
            pool=pool.name,
            settings=("timeout", "connect_timeout"),
        )
    if error and state.size < pool.maxconn:
        return PoolTimeout(
            f"pool {pool.name!r}: no connection within {within}: waiting for the next connect after failed "
            f"ones (none begun during the wait has failed yet).{earlier} Raise {label('timeout')} to wait "
            f"for the next attempt",
            pool=pool.name,
            settings=("timeout",),
        )
    return PoolTimeout(
        f"pool {pool.name!r}: no connection free within {within}; all {pool.maxconn} are in use. "
        f"Raise {label('maxconn')} or {label('timeout')}, or find the requests that hold connections for long",
        pool=pool.name,
        settings=("maxconn", "timeout"),
    )


def _last_error(state: ProcessState) -> str | None:
    """The error of the last connect, if it failed, ending in one stop: a sentence follows.

    libpq's own messages end in "." or in a question ("...accepting TCP/IP
    connections?"), which keeps its mark.
    """
    error = state.backoff.last_error if state.backoff.active else None
    if not error:
        return None
    error = error.rstrip().rstrip(".")
    return error if error.endswith(("?", "!")) else error + "."
