"""Giving a connection back: finding its record, and the slow path of a
connection that needs work (a rollback, a reset) or must be closed.

The common case, a connection returned as it was handed out, is in
:meth:`ConnectionPool.putconn`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable
from typing import TYPE_CHECKING

from psycopg2.extensions import connection
from psycopg2.pool import PoolError

from ._record import ConnectionRecord
from ._session import close_quietly, reset_for_reuse
from ._waiting import forget, give_back

if TYPE_CHECKING:
    from ._pool import ConnectionPool
    from ._state import ProcessState

__all__ = ["checked_out_record", "may_keep", "putconn_slow", "release", "reset"]

_log = logging.getLogger("flask_pgpool")
_monotonic = time.monotonic


def checked_out_record(
    pool: ConnectionPool, state: ProcessState, conn: connection | None, key: Hashable | None
) -> ConnectionRecord:
    """Under the lock: the record of a connection being returned, or a clear PoolError."""
    if conn is None:
        record = state.keys.get(key) if key is not None else None
        if record is None:
            raise PoolError(f"pool {pool.name!r}: putconn() needs a connection, or the key it was checked out with")
        return record
    record = state.records.get(id(conn))
    if record is None or record.conn is not conn or not record.in_use or (key is not None and record.key != key):
        raise PoolError(
            f"pool {pool.name!r}: this connection is not checked out from this pool "
            "(already returned, opened elsewhere, or inherited from a parent process)"
        )
    return record


def putconn_slow(
    pool: ConnectionPool, state: ProcessState, conn: connection | None, key: Hashable | None, close: bool
) -> None:
    """Return a connection that needs work (a rollback, a reset) or must be closed."""
    with state.lock:
        record = checked_out_record(pool, state, conn, key)
        release(state, record)  # nobody can return it twice from here on
    keep = False
    try:
        keep = not (close or pool.closed) and reset(pool, record)
    finally:
        now = _monotonic()
        with state.lock:
            keep = keep and may_keep(pool, state, record, now)
            if keep:
                record.last_used = now
                give_back(state, record)
            else:
                forget(pool, state, record)
        if not keep:
            close_quietly(record.conn, pool._ping_limit)
    if pool._observers.callbacks:
        pool._observers.notify("return", now - record.checked_out_at)


def release(state: ProcessState, record: ConnectionRecord) -> None:
    """Under the lock: the connection is no longer checked out (nor under its key)."""
    record.in_use = False
    if record.key is not None:
        del state.keys[record.key]
        record.key = None


def may_keep(pool: ConnectionPool, state: ProcessState, record: ConnectionRecord, now: float) -> bool:
    """Under the lock: may a returned connection in good order stay in the pool?"""
    return (
        not pool.closed
        and len(state.records) + state.opening <= pool.maxconn
        and record.keep_after_return(now, state.generation)
    )


def reset(pool: ConnectionPool, record: ConnectionRecord) -> bool:
    """Outside the lock: make a returned connection reusable, or say it is not."""
    conn = record.conn
    try:
        reset_for_reuse(conn, record.session, pool._ping_limit, pool.reset, pool._connector.configure)
        if not pool._failover.returned(conn, record):
            return False
    except Exception as exc:
        with pool._state.lock:
            pool._state.counters.returns_bad += 1
        _log.info(
            "pool %r: discarded a connection returned broken: %s",
            pool.name,
            pool._connector.redact(str(exc).strip() or type(exc).__name__),
        )
        return False
    return True
