"""The pool engine: a psycopg2 ThreadedConnectionPool that waits, checks and survives fork.

It knows nothing of Flask. What it changes from psycopg2's pool:

* a checkout beyond ``maxconn`` waits (first come, first served) instead of
  raising "connection pool exhausted";
* idle connections are kept (up to ``maxconn``) and closed only after
  ``max_idle``; ``minconn`` stay open once the pool is in use;
* connections are opened in background threads, and rolling back and
  pinging happen outside the lock, bounded in time;
* a connection the server has closed is detected at checkout and replaced,
  without a round trip for a healthy, recently used connection;
* a slot is freed whatever happens on return; counts never drift;
* a child process after ``fork()`` never uses its parent's connections: it
  starts with an empty pool of its own.

This module is the facade; the parts live beside it: the per-connection
record and its policy (``_record``), the wait queue (``_waiting``), opening
connections and the backoff (``_connector``), the return to the pool
(``_session``), the background thread (``_housekeeper``), per-process state
and fork (``_state``, ``_fork``), counters and observers (``_stats``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import traceback
from collections.abc import Callable, Hashable, Mapping
from typing import Any

from psycopg2.extensions import connection
from psycopg2.pool import PoolError, ThreadedConnectionPool

from . import _dsn as dsnlib
from . import _fork, _housekeeper
from ._connector import Connector
from ._errors import DatabaseUnavailable, PoolClosed, PoolTimeout, TooManyRequests
from ._health import SocketState, peek_state, ping, poller_for, quick_state
from ._record import ConnectionRecord, HealthPolicy, Verdict, ping_budget
from ._session import Reset, close_quietly, reset_for_reuse, session_of
from ._state import ProcessState
from ._stats import STATS_KEYS, Observer, Observers
from ._validate import check_sizes, nonnegative_seconds, positive_seconds
from ._waiting import Waiter

__all__ = ["STATS_KEYS", "ConnectionPool"]

_log = logging.getLogger("flask_pgpool")
_monotonic = time.monotonic
_getpid = os.getpid

# A checkout that finds the database down (the last connect failed and no
# connection is open) waits this long for the next attempt, not its whole timeout.
FAIL_FAST = 1.0


class ConnectionPool(ThreadedConnectionPool):
    """A thread-safe pool of psycopg2 connections.

    ``getconn()`` / ``putconn()`` / ``closeall()`` keep the meaning they have in
    :class:`psycopg2.pool.ThreadedConnectionPool`; the constructor takes the
    connection string and the pool's options by name. No connection is opened
    before the first ``getconn()``.
    """

    _state: ProcessState

    def __init__(
        self,
        minconn: int = 1,
        maxconn: int = 10,
        dsn: str | Callable[[], str] = "",
        *,
        name: str = "default",
        timeout: float = 10.0,
        max_waiting: int = 0,
        max_idle: float = 600.0,
        max_lifetime: float = 3600.0,
        health_check: bool = True,
        ping_after: float | None = 30.0,
        leak_timeout: float | None = None,
        connect_timeout: int = 5,
        read_only: bool = False,
        configure: Callable[[connection], None] | None = None,
        connect_args: Mapping[str, Any] | None = None,
        reset: Reset | None = None,
        label: Callable[[str], str] | None = None,
    ) -> None:
        """Create a pool; no connection is opened until the first :meth:`getconn`.

        ``minconn`` connections are kept open once the pool is in use, at most
        ``maxconn`` are ever open. ``dsn`` is a libpq connection string or URL,
        or a function returning one (called on first use). A checkout waits up
        to ``timeout`` seconds; at most ``max_waiting`` checkouts wait (0: no
        limit). Idle connections above ``minconn`` close after ``max_idle``
        seconds, every connection after ``max_lifetime`` (with jitter). With
        ``health_check``, a checkout looks at the socket (no round trip) and
        pings a connection idle for ``ping_after`` seconds (None: never, 0:
        always). ``leak_timeout`` logs where a connection held longer was
        checked out. ``connect_timeout`` bounds a connect (and a ping or
        rollback). ``read_only`` makes every transaction read-only.
        ``configure(conn)`` runs on each new connection, ``connect_args`` go to
        ``psycopg2.connect()``. ``reset`` runs on each returned connection: SQL
        such as ``"DISCARD ALL"`` or a function given the connection.
        ``label(option)`` names an option in messages (the Flask extension
        gives its ``PGPOOL_`` keys).
        """
        check_sizes("minconn", minconn, "maxconn", maxconn)
        # psycopg2's __init__ would open minconn connections at once; this pool
        # opens none before it is used, and keeps its state in _state.
        self.minconn = minconn
        self.maxconn = maxconn
        self.closed = False
        self.name = name
        self.timeout = positive_seconds("timeout", timeout)
        self.max_waiting = max_waiting
        self.max_lifetime = positive_seconds("max_lifetime", max_lifetime)
        self.leak_timeout = None if leak_timeout is None else positive_seconds("leak_timeout", leak_timeout)
        self._health = HealthPolicy(
            health_check=health_check,
            ping_after=None if ping_after is None else nonnegative_seconds("ping_after", ping_after),
            max_idle=positive_seconds("max_idle", max_idle),
        )
        self.reset = reset
        self._label = label or str
        self._connector = Connector(
            dsn,
            connect_args=connect_args,
            connect_timeout=connect_timeout,
            read_only=read_only,
            configure=configure,
        )
        self._observers = Observers(name)
        self._housekeeper = _housekeeper.Housekeeper(self)
        self._state = ProcessState()
        _fork.track(self)

    # -- options shown as attributes, as psycopg2's pool and earlier versions did --

    @property
    def health_check(self) -> bool:
        return self._health.health_check

    @property
    def ping_after(self) -> float | None:
        return self._health.ping_after

    @property
    def max_idle(self) -> float:
        return self._health.max_idle

    @property
    def read_only(self) -> bool:
        return self._connector.read_only

    @property
    def configure(self) -> Callable[[connection], None] | None:
        return self._connector.configure

    # -- checkout ----------------------------------------------------------

    def getconn(self, key: Hashable | None = None, timeout: float | None = None) -> connection:
        """Check out a connection, waiting up to ``timeout`` seconds for one
        (default: the pool's ``timeout``).

        With a ``key``, the same connection is returned to every caller until
        it is put back, as in psycopg2. Raises :class:`PoolTimeout` when none
        is free in time (:class:`DatabaseUnavailable` sooner when the database
        cannot be reached), :class:`TooManyRequests` when ``max_waiting``
        requests already wait, :class:`PoolClosed` after :meth:`closeall`.
        """
        if key is not None:
            return self._getconn_keyed(key, timeout)
        state = self._state
        if state.pid != _getpid():
            state = _fork.reset_if_forked(self)
        with state.lock:
            if self.closed:
                raise self._closed_error()
            state.counters.requests_num += 1
            record = None
            # The common case, in one lock section: an idle connection, nobody waiting.
            if state.idle and not state.waiters:
                record = state.idle.pop()
                record.in_use = True
        started = _monotonic()
        limit = self.timeout if timeout is None else timeout
        if record is not None and self._check_out(state, record, started, started + limit):
            if self._observers:
                self._observers.notify("checkout", 0.0)
            return record.conn
        record = self._wait_for_connection(state, started, limit)
        if self._observers:
            self._observers.notify("checkout", _monotonic() - started)
        return record.conn

    def _getconn_keyed(self, key: Hashable, timeout: float | None) -> connection:
        """psycopg2's keyed checkout: one connection per key until it is put back.

        Concurrent first checkouts of one key wait for the first of them
        instead of each taking a connection that only one could return.
        """
        deadline = _monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            state = self._state
            if state.pid != _getpid():
                state = _fork.reset_if_forked(self)
            with state.lock:
                if self.closed:
                    raise self._closed_error()
                record = state.keys.get(key)
                if record is not None:
                    return record.conn
                claim = state.claims.get(key)
                if claim is None:
                    claim = state.claims[key] = threading.Event()
                    break
            if not claim.wait(max(deadline - _monotonic(), 0.0)):
                raise self._timeout_error(state, self.timeout if timeout is None else timeout)
        try:
            conn = self.getconn(timeout=max(deadline - _monotonic(), 0.0))
            with state.lock:
                record = state.records[id(conn)]
                record.key = key
                state.keys[key] = record
            return conn
        finally:
            with state.lock:
                del state.claims[key]
            claim.set()

    def _check_out(self, state: ProcessState, record: ConnectionRecord, now: float, deadline: float) -> bool:
        """Outside the lock: hand out ``record`` if it passes its health check.

        On success it is registered as checked out. Otherwise it is closed
        (and counted lost if it was dead) or, when the checkout has no time
        left for the ping it needs, handed on untouched; False either way.
        """
        conn = record.conn
        try:
            socket = peek_state(conn, record.poller) if self._health.health_check else quick_state(conn)
            verdict = record.checkout_verdict(
                now, socket, self._health, suspect_before=state.suspect_before, generation=state.generation
            )
            if verdict is Verdict.PING:
                budget = ping_budget(deadline - now, self._ping_limit, state.round_trip)
                if budget is None:
                    with state.lock:
                        record.in_use = False
                        self._give_back(state, record)
                    return False
                verdict = Verdict.USE if self._ping(state, conn, budget) else Verdict.DEAD
        except BaseException:
            # Interrupted (KeyboardInterrupt in a ping...): the slot is freed all the same.
            self._discard(state, record, lost=False)
            raise
        if verdict is Verdict.USE:
            record.checked_out_at = now
            record.leak_reported = False
            if self.leak_timeout is not None:
                # Outside the lock: capturing a stack costs more than a checkout.
                record.stack = _caller_stack()
            if not state.housekeeper_started:
                self._housekeeper.ensure_started(state)
            return True
        self._discard(state, record, lost=verdict is Verdict.DEAD)
        return False

    def _ping(self, state: ProcessState, conn: connection, budget: float) -> bool:
        started = _monotonic()
        alive = ping(conn, budget)
        if alive:
            # Smoothed, so that one slow answer does not inflate the next budgets.
            state.round_trip = 0.8 * state.round_trip + 0.2 * (_monotonic() - started)
        return alive

    def _wait_for_connection(self, state: ProcessState, started: float, limit: float) -> ConnectionRecord:
        """Queue until a connection is handed over or opened, then check it out."""
        waiter = state.waiters.ticket(started + limit)
        try:
            while True:
                with state.lock:
                    record = self._next_step(state, waiter, limit)
                self._spawn(state, waiter.spawn)
                if record is None:
                    waiter.wait(waiter.sleep)
                elif self._check_out(state, record, _monotonic(), waiter.deadline):
                    if waiter.queued:
                        with state.lock:
                            state.counters.requests_wait_ms += int((_monotonic() - started) * 1000)
                    return record
                # Otherwise it was dead or handed on: the waiter keeps its place.
        except (PoolTimeout, TooManyRequests) as exc:
            waited = _monotonic() - started
            # The caller gets the exception (Flask: a 503, logged there); INFO keeps a trace here.
            _log.info("%s (after waiting %.3f s)", exc, waited)
            self._observers.notify("timeout" if isinstance(exc, PoolTimeout) else "rejected", waited)
            raise
        except BaseException:
            # Whatever interrupted the checkout (KeyboardInterrupt included), its
            # place in the queue and any connection handed to it are released.
            with state.lock:
                state.waiters.leave(waiter)
                handed = waiter.take()
                if handed is not None:
                    handed.in_use = False
                    self._give_back(state, handed)
            raise

    def _next_step(self, state: ProcessState, waiter: Waiter, limit: float) -> ConnectionRecord | None:
        """Under the lock: the connection the waiter gets now, or None after queueing it.

        Sets ``waiter.spawn`` (connections to open for the queue) and
        ``waiter.sleep`` (how long to wait); raises if it must give up.
        """
        waiter.spawn = 0
        if self.closed:
            if waiter.joined:
                state.counters.requests_errors += 1
            raise self._closed_error()
        handed = waiter.take()
        if handed is not None:
            return handed
        now = _monotonic()
        give_up_at = self._give_up_at(state, waiter, now)
        if now >= give_up_at:
            state.waiters.leave(waiter)
            state.counters.requests_errors += 1
            raise self._wait_error(state, limit, down=waiter.down_since is not None)
        if state.idle and (not state.waiters or state.waiters.first() is waiter):
            state.waiters.leave(waiter)
            record = state.idle.pop()
            record.in_use = True
            return record
        if not waiter.in_queue:
            if waiter.joined:
                state.waiters.rejoin_first(waiter)  # its connection was dead: it keeps its place
            elif self.max_waiting and self._queue_full(state):
                state.counters.requests_errors += 1
                raise self._too_many_error()
            else:
                state.waiters.append(waiter)
        waiter.spawn = self._grow(state, now)
        if not waiter.queued and state.opening < len(state.waiters):
            # No connection is on its way for this checkout.
            waiter.queued = True
            state.counters.requests_queued += 1
        waiter.sleep = self._wait_time(state, waiter, now, give_up_at)
        return None

    def _give_up_at(self, state: ProcessState, waiter: Waiter, now: float) -> float:
        """Under the lock: when the waiter stops waiting: at its deadline, or
        soon once the database is down (the last connect failed and nothing is open)."""
        if state.backoff.active and not state.records:
            if waiter.down_since is None:
                waiter.down_since = now
            return min(waiter.deadline, waiter.down_since + FAIL_FAST)
        waiter.down_since = None
        return waiter.deadline

    def _wait_time(self, state: ProcessState, waiter: Waiter, now: float, give_up_at: float) -> float:
        """Under the lock: how long to sleep. The first in line wakes when the
        backoff ends, to start the next attempt."""
        wait = give_up_at - now
        backoff = state.backoff
        if backoff.active and state.waiters.first() is waiter and state.size < self.maxconn:
            wait = min(wait, max(backoff.next_at - now, 0.001))
        return wait

    def _queue_full(self, state: ProcessState) -> bool:
        """Under the lock: would one more checkout exceed ``max_waiting``?

        Checkouts a connection is being opened for, or that can open one, are
        not queued: the limit is on those waiting for a connection to be
        returned (or for a failing server).
        """
        can_grow = state.size < self.maxconn and not state.backoff.active
        return not can_grow and len(state.waiters) - state.opening >= self.max_waiting

    # -- return ------------------------------------------------------------

    def putconn(self, conn: connection | None = None, key: Hashable | None = None, close: bool = False) -> None:
        """Give a connection back. Its slot is freed whatever happens.

        An open transaction is rolled back; a broken, expired or ``close=True``
        connection is closed instead of pooled. Returning a connection that is
        not checked out from this pool raises :class:`psycopg2.pool.PoolError`.
        """
        state = self._state
        if state.pid != _getpid():
            state = _fork.reset_if_forked(self)
        with state.lock:
            record = self._checked_out_record(state, conn, key)
            record.in_use = False  # nobody can return it twice from here on
            if record.key is not None:
                del state.keys[record.key]
                record.key = None
        conn = record.conn
        keep = False
        try:
            keep = not (close or self.closed) and self._reset(record)
        finally:
            now = _monotonic()
            with state.lock:
                keep = (
                    keep
                    and not self.closed
                    and state.size <= self.maxconn
                    and record.keep_after_return(now, generation=state.generation)
                )
                if keep:
                    record.last_used = now
                    self._give_back(state, record)
                else:
                    self._forget(state, record)
            if not keep:
                self._close(conn)
        if self._observers:
            self._observers.notify("return", now - record.checked_out_at)

    def _checked_out_record(
        self, state: ProcessState, conn: connection | None, key: Hashable | None
    ) -> ConnectionRecord:
        """Under the lock: the record of a connection being returned, or a clear PoolError."""
        if conn is None:
            record = state.keys.get(key) if key is not None else None
            if record is None:
                raise PoolError(f"pool {self.name!r}: putconn() needs a connection, or the key it was checked out with")
            return record
        record = state.records.get(id(conn))
        if record is None or record.conn is not conn or not record.in_use or (key is not None and record.key != key):
            raise PoolError(
                f"pool {self.name!r}: this connection is not checked out from this pool "
                "(already returned, opened elsewhere, or inherited from a parent process)"
            )
        return record

    def _reset(self, record: ConnectionRecord) -> bool:
        """Outside the lock: make a returned connection reusable, or say it is not."""
        conn = record.conn
        try:
            reset_for_reuse(conn, record.session, self._ping_limit, self.reset, self._connector.configure)
            if self._health.health_check and peek_state(conn, record.poller) is SocketState.DEAD:
                raise OSError("the server closed the connection while it was checked out")
        except Exception as exc:
            with self._state.lock:
                self._state.counters.returns_bad += 1
            _log.info(
                "pool %r: discarded a connection returned broken: %s",
                self.name,
                self._connector.redact(str(exc).strip() or type(exc).__name__),
            )
            return False
        return True

    def _give_back(self, state: ProcessState, record: ConnectionRecord) -> None:
        """Under the lock: hand a healthy connection to the first waiter, or make it idle."""
        if state.waiters.hand_over(record):
            record.in_use = True
            if state.backoff.active:
                # The new first in line owns the backoff timer now.
                state.waiters.wake_first()
        else:
            state.idle.append(record)

    def _forget(self, state: ProcessState, record: ConnectionRecord) -> None:
        """Under the lock: the connection leaves the pool; its slot is free."""
        if state.records.get(id(record.conn)) is record:
            del state.records[id(record.conn)]
        state.waiters.wake_first()
        if state.size < self.minconn:
            self._housekeeper.wake()

    def _discard(self, state: ProcessState, record: ConnectionRecord, *, lost: bool) -> None:
        """Outside the lock: close a connection that failed its checkout."""
        with state.lock:
            self._forget(state, record)
            if lost:
                state.counters.connections_lost += 1
                # Connections idle since before this one died are likely dead too.
                state.suspect_before = max(state.suspect_before, record.last_used)
        if lost:
            _log.info("pool %r: discarded a connection the server had closed", self.name)
        self._close(record.conn)

    def _close(self, conn: connection) -> None:
        """Outside the lock: close a connection that leaves the pool (bounded in time)."""
        close_quietly(conn, self._ping_limit)

    @property
    def _ping_limit(self) -> float:
        """The bound of a ping, a rollback or a close."""
        connect_timeout = self._connector.connect_timeout
        return float(min(self.timeout, connect_timeout)) if connect_timeout else self.timeout

    # -- opening connections -----------------------------------------------
    #
    # Checkouts that find no idle connection queue; connections are opened
    # for them in background threads (a slow or failing connect delays nobody
    # beyond their own timeout) and handed to the first in line.

    def _grow(self, state: ProcessState, now: float) -> int:
        """Under the lock: reserve slots for the connections to open now; return how many.

        One per waiting checkout not already covered by a connection being
        opened, or up to ``minconn`` once the pool is in use; never beyond
        ``maxconn``. While the server is failing, one attempt at a time, after
        the backoff delay.
        """
        if self.closed:
            return 0
        want = len(state.waiters) - state.opening
        if state.housekeeper_started:
            want = max(want, self.minconn - state.size)
        want = min(want, self.maxconn - state.size)
        if want <= 0:
            return 0
        if state.backoff.active:
            if state.opening or not state.backoff.due(now):
                return 0
            want = 1
        state.opening += want
        return want

    def _spawn(self, state: ProcessState, count: int) -> None:
        """Outside the lock: open ``count`` reserved connections in background threads.

        A thread that cannot start counts as a failed attempt: its slot is
        given back and the backoff schedules the next try.
        """
        for _ in range(count):
            thread = threading.Thread(
                target=self._open_one, args=(state,), name=f"flask-pgpool-{self.name}-connect", daemon=True
            )
            try:
                thread.start()
            except RuntimeError as exc:  # "can't start new thread"
                self._connect_failed(state, _monotonic(), f"could not start a thread to connect: {exc}")

    def _open_one(self, state: ProcessState) -> None:
        """In a background thread: fill a slot reserved by :meth:`_grow`."""
        started = _monotonic()
        try:
            conn = self._connector.connect()
            record = ConnectionRecord(
                conn, poller_for(conn), session_of(conn), opened_at=_monotonic(), lifetime=self.max_lifetime
            )
        except BaseException as exc:
            self._connect_failed(state, started, str(exc).strip() or type(exc).__name__)
            return
        seconds = record.opened_at - started
        # Before the connection is handed over, so observers see its connect before its checkout.
        _log.debug("pool %r: opened a connection in %.0f ms", self.name, seconds * 1000)
        self._observers.notify("connect", seconds)
        with state.lock:
            recovered = state.backoff.succeeded()
        if recovered:
            # Before the hand-over, so that the log reads in the order things happened.
            _log.info("pool %r: connected again after: %s", self.name, recovered)
        with state.lock:
            state.opening -= 1
            state.counters.connections_num += 1
            state.counters.connections_ms += int(seconds * 1000)
            record.generation = state.generation
            # Closed meanwhile, shrunk by resize(), or a process that forked since.
            stale = self.closed or state.size >= self.maxconn or state is not self._state
            spawn = 0
            if not stale:
                state.records[id(conn)] = record
                self._give_back(state, record)
                spawn = self._grow(state, _monotonic())
        if stale:
            self._close(conn)
            return
        self._spawn(state, spawn)

    def _connect_failed(self, state: ProcessState, started: float, error: str) -> None:
        message = self._connector.redact(error)
        now = _monotonic()
        with state.lock:
            state.opening -= 1
            state.counters.connections_num += 1
            state.counters.connections_errors += 1
            state.counters.connections_ms += int((now - started) * 1000)
            first = state.backoff.failed(now, message)
            state.waiters.wake_first()
        log = _log.warning if first else _log.debug
        log("pool %r: cannot connect (retrying with backoff): %s", self.name, message)
        self._observers.notify("connect_error", now - started)

    # -- managing the pool ---------------------------------------------------

    def closeall(self) -> None:
        """Close the pool: idle connections now, connections in use when returned.

        Waiting checkouts fail with :class:`PoolClosed`. Calling it again does
        nothing. In a child process it never touches the parent's connections.
        """
        state = self._state
        if state.pid != _getpid():
            state = _fork.reset_if_forked(self)
        with state.lock:
            if self.closed:
                return
            self.closed = True
            idle, state.idle = state.idle, []
            for record in idle:
                state.records.pop(id(record.conn), None)
            state.waiters.wake_all()
            self._housekeeper.stop()
        for record in idle:
            self._close(record.conn)
        _log.debug("pool %r closed", self.name)

    close = closeall

    def resize(self, minconn: int, maxconn: int) -> None:
        """Change the pool's bounds at run time.

        Growing takes effect at once (waiting checkouts may open connections);
        shrinking closes idle connections now and surplus ones when returned.
        """
        check_sizes("minconn", minconn, "maxconn", maxconn)
        state = self._state
        with state.lock:
            self.minconn, self.maxconn = minconn, maxconn
            excess = []
            while state.idle and state.size > maxconn:
                record = state.idle.pop(0)  # the least recently used first
                state.records.pop(id(record.conn), None)
                excess.append(record)
            spawn = self._grow(state, _monotonic())
            self._housekeeper.wake()
        self._spawn(state, spawn)
        for record in excess:
            self._close(record.conn)

    def check(self) -> None:
        """Test every idle connection with a round trip; replace the dead ones."""
        state = self._state
        with state.lock:
            if self.closed:
                raise self._closed_error()
            checking, state.idle = state.idle, []
            for record in checking:
                record.in_use = True  # out of the idle list while it is pinged
        alive = [
            record
            for record in checking
            if peek_state(record.conn, record.poller) is not SocketState.DEAD and ping(record.conn, self._ping_limit)
        ]
        closing = []
        with state.lock:
            now = _monotonic()
            for record in checking:
                record.in_use = False
                healthy = record in alive
                # Back like a returned connection: within maxconn (a resize() may have shrunk the pool meanwhile).
                if healthy and not self.closed and state.size <= self.maxconn:
                    record.last_used = now
                    self._give_back(state, record)
                else:
                    state.counters.connections_lost += not healthy
                    self._forget(state, record)
                    closing.append(record)
            spawn = self._grow(state, now)
        self._spawn(state, spawn)
        for record in closing:
            self._close(record.conn)

    def drain(self) -> None:
        """Retire every connection open now: idle ones at once, the others when
        they are returned; new ones are opened as needed. Nothing fails
        because of it."""
        state = self._state
        with state.lock:
            state.generation += 1
            retiring = [record for record in state.idle if record.generation < state.generation]
            state.idle = [record for record in state.idle if record.generation >= state.generation]
            for record in retiring:
                state.records.pop(id(record.conn), None)
            spawn = self._grow(state, _monotonic())
        _log.info("pool %r: draining; %d idle connection(s) closed", self.name, len(retiring))
        self._spawn(state, spawn)
        for record in retiring:
            self._close(record.conn)

    # -- stats and observers ---------------------------------------------------

    def get_stats(self) -> dict[str, int]:
        """The pool's gauges and counters (see :data:`STATS_KEYS`)."""
        with self._state.lock:
            return self._snapshot(self._state)

    def pop_stats(self) -> dict[str, int]:
        """Like :meth:`get_stats`, then reset the counters to zero (atomically)."""
        with self._state.lock:
            stats = self._snapshot(self._state)
            self._state.counters.reset()
        return stats

    def _snapshot(self, state: ProcessState) -> dict[str, int]:
        stats = {
            "pool_min": self.minconn,
            "pool_max": self.maxconn,
            "pool_size": state.size,
            "pool_available": len(state.idle),
            "requests_waiting": len(state.waiters),
        }
        stats.update(state.counters.as_dict())
        return stats

    def add_observer(self, callback: Observer) -> None:
        """Call ``callback(event, seconds)`` on pool events, outside the pool's lock.

        Events (:data:`flask_pgpool.PoolEvent`): ``"checkout"`` (seconds the
        checkout waited), ``"timeout"`` and ``"rejected"`` (a checkout failed
        with :class:`PoolTimeout` or :class:`TooManyRequests`; seconds waited),
        ``"return"`` (seconds the connection was checked out), ``"connect"``
        and ``"connect_error"`` (seconds the attempt took). The callback runs
        in the thread of the event and must be quick; its exceptions are
        logged and ignored. Observers stay with the pool in a forked child.
        """
        self._observers.add(callback)

    # -- connection string -------------------------------------------------------

    def redact(self, text: str) -> str:
        """``text`` with this pool's password masked: use it on anything you show."""
        return self._connector.redact(text)

    @property
    def dsn(self) -> str:
        """The connection string with its password masked."""
        dsn = self._connector.resolved_dsn
        return "<not resolved yet>" if dsn is None else dsnlib.mask_dsn(dsn)

    def connection_string(self) -> str:
        """The real connection string (resolved on first call). Keep it secret."""
        return self._connector.params()[0]

    def connect_params(self) -> tuple[str, dict[str, Any]]:
        """The DSN and the keyword arguments the pool passes to ``psycopg2.connect()``. Keep them secret."""
        dsn, kwargs = self._connector.params()
        return dsn, dict(kwargs)

    def __repr__(self) -> str:
        dsn = self._connector.resolved_dsn
        where = dsnlib.describe(dsn) if dsn is not None else "not resolved yet"
        state = self._state
        return (
            f"<{type(self).__name__} {self.name!r} {where} "
            f"size={state.size}/{self.maxconn} idle={len(state.idle)} "
            f"waiting={len(state.waiters)}{' closed' if self.closed else ''}>"
        )

    # -- errors --------------------------------------------------------------------

    def _closed_error(self) -> PoolClosed:
        return PoolClosed(f"pool {self.name!r} is closed", pool=self.name)

    def _too_many_error(self) -> TooManyRequests:
        label = self._label
        return TooManyRequests(
            f"pool {self.name!r}: {self.max_waiting} requests are already waiting for a connection "
            f"({label('max_waiting')}); raise it, raise {label('maxconn')}, or send fewer requests at once",
            pool=self.name,
            settings=("max_waiting", "maxconn"),
        )

    def _wait_error(self, state: ProcessState, limit: float, *, down: bool) -> PoolTimeout:
        """Under the lock: the error of a checkout that gives up, saying why and what to tune."""
        label = self._label
        if down and state.backoff.last_error:
            return DatabaseUnavailable(
                f"pool {self.name!r}: could not connect to the database: {state.backoff.last_error}. "
                f"Check that the server is up and that the connection string ({label('dsn')}) is right",
                pool=self.name,
                settings=("dsn",),
            )
        return self._timeout_error(state, limit)

    def _timeout_error(self, state: ProcessState, limit: float) -> PoolTimeout:
        label = self._label
        # Name the setting only when the limit came from it, not from getconn(timeout=...).
        within = f"{limit:g} s" + (f" ({label('timeout')})" if limit == self.timeout else "")
        if state.backoff.active and state.backoff.last_error:
            return PoolTimeout(
                f"pool {self.name!r}: could not connect to the database within {within}: "
                f"{state.backoff.last_error}. Check that the server is up and that the connection "
                f"string ({label('dsn')}) is right",
                pool=self.name,
                settings=("dsn", "timeout"),
            )
        if state.opening and len(state.records) < self.maxconn:
            return PoolTimeout(
                f"pool {self.name!r}: no connection within {within}: a new connection is still being "
                f"opened; the server or the network is slow to answer ({label('connect_timeout')})",
                pool=self.name,
                settings=("connect_timeout", "timeout"),
            )
        return PoolTimeout(
            f"pool {self.name!r}: no connection free within {within}; all {self.maxconn} are in use. "
            f"Raise {label('maxconn')} or {label('timeout')}, or find the requests that hold connections for long",
            pool=self.name,
            settings=("maxconn", "timeout"),
        )

    # -- processes -------------------------------------------------------------------

    def _after_fork(self) -> None:
        """In a child process: start empty. The parent's connections are
        released without a word on their sockets (see :mod:`flask_pgpool._fork`)."""
        inherited = list(self._state.records.values())
        self._state = ProcessState()
        self._connector.after_fork()
        self._housekeeper = _housekeeper.Housekeeper(self)
        _fork.release_sockets(record.conn for record in inherited)


def _caller_stack() -> traceback.StackSummary:
    """The stack of the code that checked a connection out, without this package's frames."""
    package = os.path.dirname(__file__)
    frames = [frame for frame in traceback.extract_stack() if os.path.dirname(frame.filename) != package]
    return traceback.StackSummary.from_list(frames)
