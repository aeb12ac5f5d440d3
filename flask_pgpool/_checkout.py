"""Checking a connection out: its health check at checkout, and the queued
path of a checkout that finds no idle connection.

The fast path (an idle connection, nobody waiting) is in
:meth:`ConnectionPool.getconn`; everything slower is here.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import traceback
from collections.abc import Hashable
from typing import TYPE_CHECKING

from psycopg2.extensions import connection

from . import _fork, _messages
from ._errors import PoolTimeout, TooManyRequests
from ._health import peek_state, ping, quick_state
from ._opener import grow, spawn
from ._record import ConnectionRecord, Verdict, ping_budget
from ._session import close_quietly
from ._waiting import Waiter, count_wait, forget, give_back

if TYPE_CHECKING:
    from ._pool import ConnectionPool
    from ._state import ProcessState

__all__ = ["check_out", "discard", "getconn_keyed", "wait_for_connection"]

_log = logging.getLogger("flask_pgpool")
_monotonic = time.monotonic

# A checkout that finds the database down (the last connect failed and no
# connection is open) waits this long for the next attempt, not its whole timeout.
FAIL_FAST = 1.0  # seconds


def getconn_keyed(pool: ConnectionPool, key: Hashable, timeout: float | None) -> connection:
    """psycopg2's keyed checkout: one connection per key until it is put back.

    Concurrent first checkouts of one key wait for the first of them
    instead of each taking a connection that only one could return.
    """
    deadline = _monotonic() + (pool.timeout if timeout is None else timeout)
    while True:
        state = pool._state
        if _fork.stale(state):
            state = _fork.current_state(pool)
        with state.lock:
            if pool.closed:
                raise _messages.closed_error(pool)
            record = state.keys.get(key)
            if record is not None:
                return record.conn
            claim = state.claims.get(key)
            if claim is None:
                claim = state.claims[key] = threading.Event()
                break
        if not claim.wait(max(deadline - _monotonic(), 0.0)):
            limit = pool.timeout if timeout is None else timeout
            raise _messages.timeout_error(pool, state, limit, since=deadline - limit)
    try:
        # The pool's own getconn(), not a subclass's, which may call this one.
        from ._pool import ConnectionPool  # a cycle at import time

        conn = ConnectionPool.getconn(pool, None, max(deadline - _monotonic(), 0.0))
        with state.lock:
            record = state.records[id(conn)]
            record.key = key
            state.keys[key] = record
        return conn
    finally:
        with state.lock:
            del state.claims[key]
        claim.set()


def check_out(pool: ConnectionPool, state: ProcessState, record: ConnectionRecord, now: float, deadline: float) -> bool:
    """Outside the lock: hand out ``record`` if it passes its health check.

    On success it is registered as checked out. Otherwise it is closed
    (and counted lost if it was dead) or, when the checkout has no time
    left for the ping it needs, handed on untouched; False either way.
    """
    conn = record.conn
    try:
        socket = peek_state(conn, record.poller) if pool._health.health_check else quick_state(conn)
        verdict = record.checkout_verdict(
            now, socket, pool._health, state.suspect_before, state.generation, pool._failover.suspect_before
        )
        if verdict is Verdict.PING:
            budget = ping_budget(deadline - now, pool._ping_limit, state.round_trip)
            if budget is None:
                with state.lock:
                    record.in_use = False
                    give_back(state, record)
                return False
            verdict = Verdict.USE if _ping(state, conn, budget) else Verdict.DEAD
            if verdict is Verdict.USE and not pool._failover.pinged(conn, record):
                verdict = Verdict.RETIRED  # its server refuses writes now: closed, not lost
    except BaseException:
        # Interrupted (KeyboardInterrupt in a ping...): the slot is freed all the same.
        discard(pool, state, record, lost=False)
        raise
    if verdict is Verdict.USE:
        record.checked_out_at = now
        record.leak_reported = False
        if pool.leak_timeout is not None:
            # Outside the lock: capturing a stack costs more than a checkout.
            record.stack = _caller_stack()
        if not state.housekeeper_started:
            pool._housekeeper.ensure_started(state)
        return True
    discard(pool, state, record, lost=verdict is Verdict.DEAD)
    return False


def discard(pool: ConnectionPool, state: ProcessState, record: ConnectionRecord, *, lost: bool) -> None:
    """Outside the lock: close a connection that failed its checkout."""
    with state.lock:
        forget(pool, state, record)
        if lost:
            state.counters.connections_lost += 1
            # Connections idle since before this one died are likely dead too.
            state.suspect_before = max(state.suspect_before, record.last_used)
    if lost:
        _log.info("pool %r: discarded a connection the server had closed", pool.name)
    close_quietly(record.conn, pool._ping_limit)


def _ping(state: ProcessState, conn: connection, budget: float) -> bool:
    started = _monotonic()
    alive = ping(conn, budget)
    if alive:
        # Smoothed, so that one slow answer does not inflate the next budgets.
        state.round_trip = 0.8 * state.round_trip + 0.2 * (_monotonic() - started)
    return alive


def wait_for_connection(pool: ConnectionPool, state: ProcessState, started: float, limit: float) -> ConnectionRecord:
    """Queue until a connection is handed over or opened, then check it out."""
    waiter = state.waiters.ticket(started, started + limit)
    try:
        while True:
            with state.lock:
                record = next_step(pool, state, waiter, limit)
            spawn(pool, state, waiter.spawn)
            # Asleep until a hand-over (taken without the pool's lock) or a nudge.
            while record is None and waiter.wait(waiter.sleep):
                record = waiter.take_handed()
                if record is None:
                    break  # nudged: look again under the lock
            if record is not None and check_out(pool, state, record, _monotonic(), waiter.deadline):
                return record  # its wait was counted when it got the connection (see count_wait)
            # Otherwise it timed out, was nudged, or its connection was dead or
            # handed on: the next step decides, and the waiter keeps its place.
    except (PoolTimeout, TooManyRequests) as exc:
        waited = _monotonic() - started
        # The caller gets the exception (Flask: a 503, logged there); INFO keeps a trace here.
        _log.info("%s (after waiting %.3f s)", exc, waited)
        pool._observers.notify("timeout" if isinstance(exc, PoolTimeout) else "rejected", waited)
        raise
    except BaseException:
        # Whatever interrupted the checkout (KeyboardInterrupt included), its
        # place in the queue and any connection handed to it are released.
        with state.lock:
            state.waiters.leave(waiter)
            handed = waiter.take()
            if handed is not None:
                handed.in_use = False
                give_back(state, handed)
        raise


def next_step(pool: ConnectionPool, state: ProcessState, waiter: Waiter, limit: float) -> ConnectionRecord | None:
    """Under the lock: the connection the waiter gets now, or None after queueing it.

    Sets ``waiter.spawn`` (connections to open for the queue) and
    ``waiter.sleep`` (how long to wait); raises if it must give up.
    """
    waiter.spawn = 0
    if pool.closed:
        if waiter.joined:
            state.counters.requests_errors += 1
        raise _messages.closed_error(pool)
    handed = waiter.take()
    if handed is not None:
        return handed
    now = _monotonic()
    give_up = give_up_at(pool, state, waiter, now)
    if now >= give_up:
        state.waiters.leave(waiter)
        state.counters.requests_errors += 1
        raise _messages.wait_error(pool, state, limit, since=waiter.started)
    if state.idle and (not state.waiters or state.waiters.first() is waiter):
        state.waiters.leave(waiter)
        record = state.idle.pop()
        record.in_use = True
        count_wait(state, waiter, now)
        return record
    if not waiter.in_queue:
        if waiter.joined:
            state.waiters.rejoin_first(waiter)  # its connection was dead: it keeps its place
        elif pool.max_waiting and queue_full(pool, state):
            state.counters.requests_errors += 1
            raise _messages.too_many_error(pool)
        else:
            state.waiters.enqueue(waiter)
    waiter.spawn = grow(pool, state, now)
    if not waiter.queued and state.opening < len(state.waiters):
        # No connection is on its way for this checkout.
        waiter.queued = True
        state.counters.requests_queued += 1
    waiter.sleep = wait_time(pool, state, waiter, now, give_up)
    return None


def give_up_at(pool: ConnectionPool, state: ProcessState, waiter: Waiter, now: float) -> float:
    """Under the lock: when the waiter stops waiting: at its deadline, or soon
    once the database is down (a connect failed and nothing is open): after
    :data:`FAIL_FAST` seconds, once an attempt begun during this wait failed.

    An attempt begun before the wait proves nothing to it: on a path that
    went silent, an attempt under way fails only at its connect_timeout,
    and the next one may find the server back.
    """
    backoff = state.backoff
    if not backoff.active or state.records:
        waiter.down_since = None
        return waiter.deadline
    if waiter.down_since is None:
        waiter.down_since = now
    if not backoff.failed_since(waiter.started):
        return waiter.deadline  # wait for an attempt of its own time
    return min(waiter.deadline, waiter.down_since + FAIL_FAST)


def wait_time(pool: ConnectionPool, state: ProcessState, waiter: Waiter, now: float, give_up: float) -> float:
    """Under the lock: how long to sleep. The first in line wakes when the
    backoff ends, to start the next attempt."""
    wait = give_up - now
    backoff = state.backoff
    if backoff.active and state.waiters.first() is waiter and state.size < pool.maxconn:
        wait = min(wait, max(backoff.next_at - now, 0.001))
    return wait


def queue_full(pool: ConnectionPool, state: ProcessState) -> bool:
    """Under the lock: would one more checkout exceed ``max_waiting``?

    Checkouts a connection is being opened for, or that can open one, are
    not queued: the limit is on those waiting for a connection to be
    returned (or for a failing server).
    """
    can_grow = state.size < pool.maxconn and not state.backoff.active
    return not can_grow and len(state.waiters) - state.opening >= pool.max_waiting


def _caller_stack() -> traceback.StackSummary:
    """The stack of the code that checked a connection out, without this package's frames."""
    package = os.path.dirname(__file__)
    frames = [frame for frame in traceback.extract_stack() if os.path.dirname(frame.filename) != package]
    return traceback.StackSummary.from_list(frames)
