"""Opening connections in the background: reserving slots, the threads that
connect, and what a success or a failure does to the pool.

Checkouts that find no idle connection queue; connections are opened for them
in background threads (a slow or failing connect delays nobody beyond their
own timeout) and handed to the first in line.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from . import _fork
from ._health import poller_for
from ._record import ConnectionRecord
from ._session import close_quietly, session_of
from ._waiting import give_back

if TYPE_CHECKING:
    from ._pool import ConnectionPool
    from ._state import ProcessState

__all__ = ["connect_failed", "grow", "open_one", "spawn"]

_log = logging.getLogger("flask_pgpool")
_monotonic = time.monotonic
# libpq treats a connect_timeout below 2 s as 2 s; then the set-up (configure) may take a moment.
_MIN_CONNECT_TIMEOUT = 2.0
_FORK_WAIT_MARGIN = 1.0


def grow(pool: ConnectionPool, state: ProcessState, now: float) -> int:
    """Under the lock: reserve slots for the connections to open now; return how many.

    One per waiting checkout not already covered by a connection being
    opened, or up to ``minconn`` once the pool is in use; never beyond
    ``maxconn``. While the server is failing, one attempt at a time, after
    the backoff delay.
    """
    if pool.closed:
        return 0
    want = len(state.waiters) - state.opening
    if state.housekeeper_started:
        want = max(want, pool.minconn - state.size)
    want = min(want, pool.maxconn - state.size)
    if want <= 0:
        return 0
    if state.backoff.active:
        if state.opening or not state.backoff.due(now):
            return 0
        want = 1
    state.opening += want
    return want


def spawn(pool: ConnectionPool, state: ProcessState, count: int) -> None:
    """Outside the lock: open ``count`` reserved connections in background threads.

    A thread that cannot start counts as a failed attempt: its slot is
    given back and the backoff schedules the next try.
    """
    for _ in range(count):
        thread = threading.Thread(
            target=open_one, args=(pool, state), name=f"flask-pgpool-{pool.name}-connect", daemon=True
        )
        try:
            thread.start()
        except RuntimeError as exc:  # "can't start new thread"
            connect_failed(pool, state, _monotonic(), f"could not start a thread to connect: {exc}")


def open_one(pool: ConnectionPool, state: ProcessState) -> None:
    """In a background thread: fill a slot reserved by :meth:`_grow`."""
    # Until the connection is in the pool (or closed), a fork waits for it.
    token = object()
    bound = pool._connector.connect_timeout or _fork.UNBOUNDED_CONNECT_WAIT
    _fork.connecting[token] = _monotonic() + max(bound, _MIN_CONNECT_TIMEOUT) + _FORK_WAIT_MARGIN
    try:
        _open_one(pool, state)
    finally:
        _fork.connecting.pop(token, None)


def _open_one(pool: ConnectionPool, state: ProcessState) -> None:
    started = _monotonic()
    # A drain() during the connect retires it: it may carry the old credentials.
    generation = state.generation
    try:
        conn = pool._connector.connect()
        record = ConnectionRecord(
            conn, poller_for(conn), session_of(conn), opened_at=_monotonic(), lifetime=pool.max_lifetime
        )
        pool._failover.opened(conn, record, started)
    except BaseException as exc:
        connect_failed(pool, state, started, str(exc).strip() or type(exc).__name__)
        return
    seconds = record.opened_at - started
    # Before the connection is handed over, so observers see its connect before its checkout.
    _log.debug("pool %r: opened a connection in %.0f ms", pool.name, seconds * 1000)
    pool._observers.notify("connect", seconds)
    with state.lock:
        recovered = state.backoff.succeeded()
    if recovered:
        # Before the hand-over, so that the log reads in the order things happened.
        _log.info("pool %r: connected again after: %s", pool.name, recovered)
    with state.lock:
        state.opening -= 1
        state.counters.connections_num += 1
        state.counters.connections_ms += int(seconds * 1000)
        record.generation = generation
        # Closed meanwhile, shrunk by resize(), or a process that forked since.
        stale = pool.closed or state.size >= pool.maxconn or state is not pool._state
        count = 0
        if not stale:
            state.records[id(conn)] = record
            give_back(state, record)
            count = grow(pool, state, _monotonic())
    if stale:
        close_quietly(conn, pool._ping_limit)
        return
    spawn(pool, state, count)


def connect_failed(pool: ConnectionPool, state: ProcessState, started: float, error: str) -> None:
    message = pool._connector.redact(error)
    now = _monotonic()
    with state.lock:
        state.opening -= 1
        state.counters.connections_num += 1
        state.counters.connections_errors += 1
        state.counters.connections_ms += int((now - started) * 1000)
        first = state.backoff.failed(now, message, started)
        # Each decides whether to give up (the database is down) or wait for the next attempt.
        state.waiters.wake_each()
    log = _log.warning if first else _log.debug
    log("pool %r: cannot connect (retrying with backoff): %s", pool.name, message)
    pool._observers.notify("connect_error", now - started)
