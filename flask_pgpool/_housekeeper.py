"""The pool's background thread: it closes expired and surplus idle
connections, reports leaks, and keeps ``minconn`` connections open.

One thread per pool and process, started by the first checkout. It holds the
pool weakly, so a pool nobody refers to any more is collected and the thread
ends with it.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import TYPE_CHECKING

from ._opener import grow, spawn
from ._record import ConnectionRecord, Verdict
from ._session import close_quietly

if TYPE_CHECKING:
    from ._pool import ConnectionPool
    from ._state import ProcessState

__all__ = ["Housekeeper"]

_log = logging.getLogger("flask_pgpool")

# The thread wakes at least this often, and at most this rarely.
_MIN_INTERVAL = 0.05
_MAX_INTERVAL = 5.0


class Housekeeper:
    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = weakref.ref(pool)
        self._name = pool.name
        self._stop = threading.Event()
        self._wake = threading.Event()

    def ensure_started(self, state: ProcessState) -> None:
        """Start the thread unless it runs. A thread that cannot start is retried at a later checkout."""
        with state.lock:
            if state.housekeeper_started or self._stop.is_set():
                return
            state.housekeeper_started = True
        thread = threading.Thread(
            target=_run, args=(self._pool, self._stop, self._wake), name=f"flask-pgpool-{self._name}", daemon=True
        )
        try:
            thread.start()
        except RuntimeError as exc:  # "can't start new thread"
            with state.lock:
                state.housekeeper_started = False
            _log.warning("pool %r: cannot start its housekeeping thread yet (%s); retrying later", self._name, exc)

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()


def _run(ref: weakref.ReferenceType[ConnectionPool], stop: threading.Event, wake: threading.Event) -> None:
    lock_factory = threading.Lock
    while not stop.is_set():
        pool = ref()
        if pool is None:
            return
        interval = _interval(pool)
        if stop.is_set():
            break
        try:
            tidy(pool)
        except Exception:
            _log.exception("pool %r: housekeeping failed", pool.name)
        del pool  # not held while sleeping: the pool may be collected meanwhile
        wake.wait(interval)
        wake.clear()
    if threading.Lock is not lock_factory:
        # Replaced because gevent patched the process since this thread started
        # (see _state.after_patch). A thread started before the patch
        # cannot end cleanly once threading is gevent's (threading forgets it
        # under gevent's thread ids): it sleeps for good instead, on its own event.
        while True:
            wake.clear()
            wake.wait()


def _interval(pool: ConnectionPool) -> float:
    periods = [pool.max_idle, pool.max_lifetime]
    if pool.leak_timeout is not None:
        periods.append(pool.leak_timeout)
    return max(_MIN_INTERVAL, min(_MAX_INTERVAL, min(periods) / 4))


def tidy(pool: ConnectionPool) -> None:
    """Close expired and surplus idle connections, report leaks, refill to minconn."""
    state = pool._state
    now = time.monotonic()
    with state.lock:
        if pool.closed or not state.housekeeper_started:
            return  # closed, or a forked child's copy of the parent's thread state
        closing = _take_expired(pool, state, now)
        leaks = [record for record in state.records.values() if record.leaked(now, pool.leak_timeout)]
        for record in leaks:
            record.leak_reported = True
        count = grow(pool, state, now)
    spawn(pool, state, count)
    for record in closing:
        close_quietly(record.conn, pool._ping_limit)
    if closing:
        _log.debug("pool %r: closed %d idle or expired connection(s)", pool.name, len(closing))
    for record in leaks:
        _report_leak(pool, record, now)


def _take_expired(pool: ConnectionPool, state: ProcessState, now: float) -> list[ConnectionRecord]:
    """Under the lock: take the idle connections to close out of the pool, oldest first."""
    closing = []
    for record in list(state.idle):
        verdict = record.tidy_verdict(
            now, pool._health, above_minconn=state.size > pool.minconn, generation=state.generation
        )
        if verdict is not Verdict.USE:
            state.idle.remove(record)
            del state.records[id(record.conn)]
            closing.append(record)
    return closing


def _report_leak(pool: ConnectionPool, record: ConnectionRecord, now: float) -> None:
    stack = record.stack
    _log.warning(
        "pool %r: a connection has been checked out for %.1f s (%s); it was checked out here:\n%s",
        pool.name,
        now - record.checked_out_at,
        pool._label("leak_timeout"),
        "".join(stack.format()) if stack else "(stack not recorded)\n",
    )
