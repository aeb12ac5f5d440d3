"""Managing a pool as a whole: closing it, resizing it, checking every idle
connection, draining it. Each runs its slow part (closing, pinging) outside
the pool's lock."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from psycopg2.extensions import TRANSACTION_STATUS_ACTIVE

from . import _fork, _messages
from ._health import SocketState, peek_state, ping
from ._opener import grow, spawn
from ._session import close_quietly
from ._validate import check_sizes
from ._waiting import forget, give_back

if TYPE_CHECKING:
    from ._pool import ConnectionPool

__all__ = ["cancel_running", "check", "close_pool", "drain", "resize"]

_log = logging.getLogger("flask_pgpool")
_monotonic = time.monotonic


def close_pool(pool: ConnectionPool) -> None:
    """Close the pool: idle connections now, connections in use when returned.

    Waiting checkouts fail with :class:`PoolClosed`. Calling it again does
    nothing. In a child process it never touches the parent's connections.
    """
    state = pool._state
    if _fork.stale(state):
        state = _fork.current_state(pool)
    with state.lock:
        if pool.closed:
            return
        pool.closed = True
        idle, state.idle = state.idle, []
        for record in idle:
            state.records.pop(id(record.conn), None)
        state.waiters.wake_all()
        pool._housekeeper.stop()
    for record in idle:
        close_quietly(record.conn, pool._ping_limit)
    _log.debug("pool %r closed", pool.name)


def cancel_running(pool: ConnectionPool) -> int:
    """Cancel the queries running on connections checked out now; return how many.

    For the end of the process: a thread still in a query when the
    interpreter exits (a daemon thread) dies with it, and its closed socket
    does not stop the server, which would run the query to its end.
    PostgreSQL's ``client_connection_check_interval`` is the server-side
    complement, for a process that ends without exit hooks.
    """
    state = pool._state
    if _fork.stale(state):
        return 0  # a forked child: the connections are its parent's
    with state.lock:
        busy = [record.conn for record in state.records.values() if record.in_use]
    cancelled = 0
    for conn in busy:
        try:
            # PQcancel is made for this: safe from another thread, while the query runs.
            if not conn.closed and conn.info.transaction_status == TRANSACTION_STATUS_ACTIVE:
                conn.cancel()
                cancelled += 1
        except Exception as exc:
            _log.debug("pool %r: could not cancel a running query: %s", pool.name, pool.redact(str(exc)))
    if cancelled:
        _log.info("pool %r: cancelled %d query(ies) still running at exit", pool.name, cancelled)
    return cancelled


def resize(pool: ConnectionPool, minconn: int, maxconn: int) -> None:
    """Change the pool's bounds at run time.

    Growing takes effect at once (waiting checkouts may open connections);
    shrinking closes idle connections now and surplus ones when returned.
    """
    check_sizes("minconn", minconn, "maxconn", maxconn)
    state = pool._state
    with state.lock:
        pool.minconn, pool.maxconn = minconn, maxconn
        excess = []
        while state.idle and state.size > maxconn:
            record = state.idle.pop(0)  # the least recently used first
            state.records.pop(id(record.conn), None)
            excess.append(record)
        count = grow(pool, state, _monotonic())
        pool._housekeeper.wake()
    spawn(pool, state, count)
    for record in excess:
        close_quietly(record.conn, pool._ping_limit)


def check(pool: ConnectionPool) -> None:
    """Test every idle connection with a round trip; replace the dead ones."""
    state = pool._state
    with state.lock:
        if pool.closed:
            raise _messages.closed_error(pool)
        checking, state.idle = state.idle, []
        for record in checking:
            record.in_use = True  # out of the idle list while it is pinged
    alive = [
        record
        for record in checking
        if peek_state(record.conn, record.poller) is not SocketState.DEAD and ping(record.conn, pool._ping_limit)
    ]
    closing = []
    with state.lock:
        now = _monotonic()
        for record in checking:
            record.in_use = False
            healthy = record in alive
            # Back like a returned connection: within maxconn (a resize() may have shrunk the pool meanwhile).
            if healthy and not pool.closed and state.size <= pool.maxconn:
                record.last_used = now
                give_back(state, record)
            else:
                state.counters.connections_lost += not healthy
                forget(pool, state, record)
                closing.append(record)
        count = grow(pool, state, now)
    spawn(pool, state, count)
    for record in closing:
        close_quietly(record.conn, pool._ping_limit)


def drain(pool: ConnectionPool) -> None:
    """Retire every connection open now: idle ones at once, the others when
    they are returned; new ones are opened as needed. Nothing fails
    because of it."""
    state = pool._state
    with state.lock:
        state.generation += 1
        retiring = [record for record in state.idle if record.generation < state.generation]
        state.idle = [record for record in state.idle if record.generation >= state.generation]
        for record in retiring:
            state.records.pop(id(record.conn), None)
        # As many new ones as were idle, so that the next checkouts find one
        # (a failing server gets one attempt at a time, from grow()).
        # Never below 0: a resize() may have left more in use than the new maxconn.
        replace = 0 if state.backoff.active or pool.closed else max(0, min(len(retiring), pool.maxconn - state.size))
        state.opening += replace
        count = replace + grow(pool, state, _monotonic())
    _log.info("pool %r: draining; %d idle connection(s) closed", pool.name, len(retiring))
    spawn(pool, state, count)
    for record in retiring:
        close_quietly(record.conn, pool._ping_limit)
