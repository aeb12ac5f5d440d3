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
* a child process after ``fork()`` never uses nor closes its parent's
  connections: it starts with an empty pool of its own.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import random
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import psycopg2
from psycopg2.extensions import (
    TRANSACTION_STATUS_IDLE,
    TRANSACTION_STATUS_INERROR,
    TRANSACTION_STATUS_INTRANS,
    connection,
)
from psycopg2.pool import PoolError, ThreadedConnectionPool

from . import _dsn as dsnlib
from . import _green
from ._connections import Slot, close_quietly, restore_session, session_of
from ._errors import PoolClosed, PoolTimeout, TooManyRequests
from ._health import SocketState, bounded, ping, poller_for, socket_state

__all__ = ["STATS_KEYS", "ConnectionPool"]

_log = logging.getLogger("flask_pgpool")

#: The keys of :meth:`ConnectionPool.get_stats`, named as in psycopg_pool.
STATS_KEYS = (
    "pool_min",
    "pool_max",
    "pool_size",
    "pool_available",
    "requests_waiting",
    "requests_num",
    "requests_queued",
    "requests_wait_ms",
    "requests_errors",
    "returns_bad",
    "connections_num",
    "connections_ms",
    "connections_errors",
    "connections_lost",
)
_COUNTERS = STATS_KEYS[5:]

# Reconnection backoff while the server is unreachable: doubling from the
# first delay up to the last, with jitter so that workers do not knock in step.
_BACKOFF_FIRST = 0.1
# Kept well below the default PGPOOL_TIMEOUT, so that once the server is back
# a waiting checkout sees a new attempt before it times out.
_BACKOFF_MAX = 2.0
# Connection lifetimes are shortened by up to this fraction, at random, so that
# connections opened together do not all expire together.
_LIFETIME_JITTER = 0.1
_DEFAULT_CONNECT_TIMEOUT = 5

_pools: weakref.WeakSet[ConnectionPool] = weakref.WeakSet()


@dataclass(eq=False)
class _Waiter:
    """A checkout waiting its turn; ``conn`` is set when one is handed to it."""

    event: threading.Event = field(default_factory=threading.Event)
    conn: connection | None = None


class ConnectionPool(ThreadedConnectionPool):
    """A thread-safe pool of psycopg2 connections.

    ``getconn()`` / ``putconn()`` / ``closeall()`` keep the meaning they have in
    :class:`psycopg2.pool.ThreadedConnectionPool`; the constructor takes the
    connection string and the pool's options by name. No connection is opened
    before the first ``getconn()``.
    """

    # State of the current process; reset in a child after fork().
    _lock: threading.Lock
    _pid: int
    _pool: list[connection]
    _used: dict[Hashable, connection]
    _rused: dict[int, Hashable]
    _slots: dict[int, Slot]
    _opening: int
    _waiters: collections.deque[_Waiter]
    _stats: collections.Counter[str]
    _next_connect_at: float
    _backoff: float
    _last_connect_error: str | None
    _suspect_before: float
    _housekeeper: threading.Thread | None
    _housekeeper_stop: threading.Event
    _housekeeper_wake: threading.Event

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
        connect_timeout: int = _DEFAULT_CONNECT_TIMEOUT,
        read_only: bool = False,
        configure: Callable[[connection], None] | None = None,
        connect_args: Mapping[str, Any] | None = None,
    ) -> None:
        _check_sizes(minconn, maxconn)
        # The parent opens ``minconn`` connections at once; ours opens none
        # until it is used, so it is given 0 and told the real value after.
        super().__init__(0, maxconn)
        self.minconn = minconn
        self.name = name
        self.timeout = _positive("timeout", timeout)
        self.max_waiting = max_waiting
        self.max_idle = _positive("max_idle", max_idle)
        self.max_lifetime = _positive("max_lifetime", max_lifetime)
        self.health_check = health_check
        self.ping_after = ping_after
        self.leak_timeout = leak_timeout
        self.read_only = read_only
        self.configure = configure
        self._dsn_source = dsn
        self._dsn: str | None = dsn if isinstance(dsn, str) else None
        self._dsn_lock = threading.Lock()
        self._connect_args = dict(connect_args or {})
        self._connect_timeout = connect_timeout
        self._secrets: list[str] = []
        # Kept across fork: an observer (e.g. metrics) follows the pool into workers.
        self._observers: list[Callable[[str, float], None]] = []
        self._connect_kwargs: dict[str, Any] | None = None
        if self._dsn is not None:
            self._secrets = dsnlib.secrets_of(self._dsn, self._connect_args)
        self._reset_process_state()
        _pools.add(self)

    # -- public API ------------------------------------------------------

    def getconn(self, key: Hashable | None = None, timeout: float | None = None) -> connection:
        """Check out a connection, waiting up to ``timeout`` seconds for one
        (default: the pool's ``timeout``).

        Raises :class:`PoolTimeout` when none is free in time,
        :class:`TooManyRequests` when ``max_waiting`` requests already wait,
        :class:`PoolClosed` after :meth:`closeall`.
        """
        with self._locked():
            self._check_open()
            if key is not None and key in self._used:
                conn: connection = self._used[key]
                return conn
            self._stats["requests_num"] += 1
            # The common case, in one lock section: an idle connection, nobody
            # waiting. It counts as checked out while its health is checked.
            idle = None
            if self._pool and not self._waiters:
                idle = self._pool.pop()
                self._register(idle, key)
        started = time.monotonic()
        limit = self.timeout if timeout is None else timeout
        if idle is not None and self._take_idle(idle, started + limit):
            self._notify("checkout", 0.0)
            return idle
        try:
            conn = self._acquire(started, limit, key)
        except (PoolTimeout, TooManyRequests) as exc:
            waited = time.monotonic() - started
            # The caller gets the exception (Flask: a 503, logged there); INFO keeps a trace here.
            _log.info("%s (after waiting %.3f s)", exc, waited)
            self._notify("timeout" if isinstance(exc, PoolTimeout) else "rejected", waited)
            raise
        self._notify("checkout", time.monotonic() - started)
        return conn

    def _take_idle(self, conn: connection, deadline: float) -> bool:
        """Keep an idle connection just checked out if it passes its health check.

        One that fails it is closed and its slot freed; the caller then goes
        the slow way.
        """
        usable = False
        try:
            usable = self._usable(conn, deadline)
        finally:
            if not usable:
                with self._lock:
                    self._unregister(conn)
                    self._forget(conn)
                self._close(conn)
        return usable

    def putconn(self, conn: connection | None = None, key: Hashable | None = None, close: bool = False) -> None:
        """Give a connection back. Its slot is freed whatever happens.

        An open transaction is rolled back; a broken, expired or ``close=True``
        connection is closed instead of pooled. Returning a connection that is
        not checked out from this pool raises :class:`psycopg2.pool.PoolError`.
        """
        with self._locked():
            if conn is None:
                if key is None or key not in self._used:
                    raise PoolError(
                        f"pool {self.name!r}: putconn() needs a connection, or the key it was checked out with"
                    )
                conn = self._used[key]
            if key is None:
                key = self._rused.get(id(conn))
            if key is None or self._used.get(key) is not conn:
                raise PoolError(
                    f"pool {self.name!r}: this connection is not checked out from this pool "
                    "(already returned, opened elsewhere, or inherited from a parent process)"
                )
            del self._used[key]
            del self._rused[id(conn)]
            slot = self._slots[id(conn)]
            discard = close or self.closed
        keep = False
        try:
            keep = not discard and self._reset(conn, slot)
        finally:
            with self._lock:
                if keep and not self.closed and self._size() <= self.maxconn:
                    slot.last_used = time.monotonic()
                    self._give_back(conn)
                else:
                    keep = False
                    self._forget(conn)
            if not keep:
                self._close(conn)
        self._notify("return", time.monotonic() - slot.checked_out)

    def closeall(self) -> None:
        """Close the pool: idle connections now, connections in use when returned.

        Waiting checkouts fail with :class:`PoolClosed`. Calling it again does
        nothing. In a child process it never touches the parent's connections.
        """
        with self._locked():
            if self.closed:
                return
            self.closed = True
            idle = list(self._pool)
            self._pool.clear()
            for conn in idle:
                self._slots.pop(id(conn), None)
            for waiter in self._waiters:
                waiter.event.set()
            self._waiters.clear()
            self._stop_housekeeper()
        for conn in idle:
            self._close(conn)
        _log.debug("pool %r closed", self.name)

    close = closeall

    def resize(self, minconn: int, maxconn: int) -> None:
        """Change the pool's bounds at run time.

        Growing takes effect at once (waiting checkouts may open connections);
        shrinking closes idle connections now and surplus ones when returned.
        """
        _check_sizes(minconn, maxconn)
        with self._locked():
            self.minconn, self.maxconn = minconn, maxconn
            excess = []
            while self._pool and self._size() > maxconn:
                conn = self._pool.pop(0)
                self._slots.pop(id(conn), None)
                excess.append(conn)
            spawn = self._grow()
            self._housekeeper_wake.set()
        self._spawn(spawn)
        for conn in excess:
            self._close(conn)

    def check(self) -> None:
        """Test every idle connection with a round trip; replace the dead ones."""
        with self._locked():
            self._check_open()
            checking = list(self._pool)
            self._pool.clear()
        alive = {
            id(conn)
            for conn in checking
            if socket_state(conn, self._slots[id(conn)].poller) is not SocketState.DEAD
            and ping(conn, self._ping_timeout())
        }
        closing: list[connection] = []
        with self._lock:
            now = time.monotonic()
            for conn in checking:
                if id(conn) in alive and not self.closed:
                    self._slots[id(conn)].last_used = now
                    self._give_back(conn)
                else:
                    if id(conn) not in alive:
                        self._stats["connections_lost"] += 1
                    self._forget(conn)
                    closing.append(conn)
            spawn = self._grow()
        self._spawn(spawn)
        for conn in closing:
            self._close(conn)

    def get_stats(self) -> dict[str, int]:
        """The pool's gauges and counters (see :data:`STATS_KEYS`)."""
        with self._locked():
            return self._snapshot()

    def _snapshot(self) -> dict[str, int]:
        stats = {
            "pool_min": self.minconn,
            "pool_max": self.maxconn,
            "pool_size": self._size(),
            "pool_available": len(self._pool),
            "requests_waiting": len(self._waiters),
        }
        stats.update((k, int(self._stats[k])) for k in _COUNTERS)
        return stats

    def pop_stats(self) -> dict[str, int]:
        """Like :meth:`get_stats`, then reset the counters to zero (atomically)."""
        with self._locked():
            stats = self._snapshot()
            for key in _COUNTERS:
                self._stats[key] = 0
        return stats

    def add_observer(self, callback: Callable[[str, float], None]) -> None:
        """Call ``callback(event, seconds)`` on pool events, outside the pool's lock.

        Events: ``"checkout"`` (seconds the checkout waited), ``"timeout"`` and
        ``"rejected"`` (a checkout failed with :class:`PoolTimeout` or
        :class:`TooManyRequests`; seconds waited), ``"return"`` (seconds the
        connection was checked out), ``"connect"`` and ``"connect_error"``
        (seconds the attempt took). The callback runs in the thread of the
        event and must be quick; its exceptions are logged and ignored.
        Observers stay with the pool in a forked child.
        """
        self._observers = [*self._observers, callback]  # copied: _notify needs no lock

    def _notify(self, event: str, seconds: float) -> None:
        for callback in self._observers:
            try:
                callback(event, seconds)
            except Exception:
                _log.exception("pool %r: observer %r failed on %r", self.name, callback, event)

    def redact(self, text: str) -> str:
        """``text`` with this pool's password masked: use it on anything you show."""
        return dsnlib.redact(text, self._secrets)

    @property
    def dsn(self) -> str:
        """The connection string with its password masked."""
        if self._dsn is None:
            return "<not resolved yet>"
        return dsnlib.mask_dsn(self._dsn)

    def connection_string(self) -> str:
        """The real connection string (resolved on first call). Keep it secret."""
        return self._resolve_dsn()

    def __repr__(self) -> str:
        where = dsnlib.describe(self._dsn) if self._dsn is not None else "not resolved yet"
        return (
            f"<{type(self).__name__} {self.name!r} {where} "
            f"size={self._size()}/{self.maxconn} idle={len(self._pool)} "
            f"waiting={len(self._waiters)}{' closed' if self.closed else ''}>"
        )

    # -- checkout --------------------------------------------------------
    #
    # A checkout takes an idle connection when nobody is waiting; otherwise it
    # queues. Queued checkouts are served in order by returned connections and
    # by connections opened for them in the background (``_grow``), so a slow
    # or failing connect delays nobody beyond their own timeout.

    def _acquire(self, start: float, timeout: float, key: Hashable | None) -> connection:
        deadline = start + timeout
        waiter: _Waiter | None = None
        queued = False  # waited in line at least once
        conn: connection | None = None
        try:
            while True:
                spawn = 0
                with self._lock:
                    if self.closed:
                        raise self._leave_closed_pool(waiter)
                    if waiter is not None and waiter.conn is not None:
                        # Handed over by _give_back, which took it off the queue.
                        conn, waiter.conn = waiter.conn, None
                    elif waiter is None and not self._waiters and self._pool:
                        conn = self._pool.pop()
                    elif waiter is None:
                        if self.max_waiting and self._queue_full():
                            self._stats["requests_errors"] += 1
                            raise TooManyRequests(
                                f"pool {self.name!r}: {self.max_waiting} requests are already waiting "
                                f"for a connection (max_waiting, PGPOOL_MAX_WAITING); raise it, raise "
                                f"maxconn (PGPOOL_MAXCONN), or send fewer requests at once"
                            )
                        waiter = _Waiter()
                        self._waiters.append(waiter)
                        spawn = self._grow()
                        if not queued and self._opening < len(self._waiters):
                            # No connection is on its way for this request.
                            queued = True
                            self._stats["requests_queued"] += 1
                    else:
                        spawn = self._grow()
                self._spawn(spawn)

                if conn is not None:
                    if self._usable(conn, deadline):
                        with self._lock:
                            self._register(conn, key)
                            if queued:
                                self._stats["requests_wait_ms"] += int((time.monotonic() - start) * 1000)
                        return conn
                    with self._lock:
                        self._forget(conn)
                        if waiter is not None:
                            # A dead connection does not cost the request its place.
                            self._waiters.appendleft(waiter)
                            waiter.event.clear()
                    self._close(conn)
                    conn = None
                    continue

                assert waiter is not None
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    with self._lock:
                        if waiter.conn is not None:
                            continue  # served at the last moment
                        self._leave_queue(waiter)
                        self._stats["requests_errors"] += 1
                        raise self._timeout_error(timeout)
                waiter.event.wait(self._wait_time(waiter, remaining))
                waiter.event.clear()
        except BaseException:
            # Whatever interrupted the checkout (including KeyboardInterrupt),
            # its place in the queue and any connection it held are released.
            with self._lock:
                if waiter is not None:
                    self._leave_queue(waiter)
                    if waiter.conn is not None:
                        conn, waiter.conn = waiter.conn, None
                if conn is not None:
                    self._forget(conn)
            if conn is not None:
                self._close(conn)
            raise

    def _queue_full(self) -> bool:
        """Under the lock: would one more checkout exceed ``max_waiting``?

        Checkouts a connection is being opened for, or that can open one, are
        not queued: the limit is on those waiting for a connection to be
        returned (or for a failing server).
        """
        can_grow = self._size() < self.maxconn and not self._backoff
        waiting = len(self._waiters) - self._opening
        return not can_grow and waiting >= self.max_waiting

    def _register(self, conn: connection, key: Hashable | None) -> None:
        """Under the lock: record a connection as checked out."""
        if key is None:
            self._keys += 1
            key = ("flask_pgpool", self._keys)
        self._used[key] = conn
        self._rused[id(conn)] = key
        slot = self._slots[id(conn)]
        slot.checked_out = time.monotonic()
        slot.leak_reported = False
        slot.stack = None
        # Started by the first checkout, once its connection counts towards
        # minconn: started earlier, its first refill races that checkout and
        # opens one connection too many.
        self._start_housekeeper()
        if self.leak_timeout is not None:
            # The caller's stack, without this module's frames.
            frames = [f for f in traceback.extract_stack() if f.filename != __file__]
            slot.stack = traceback.StackSummary.from_list(frames)

    def _unregister(self, conn: connection) -> None:
        """Under the lock: undo :meth:`_register`."""
        key = self._rused.pop(id(conn), None)
        if key is not None:
            self._used.pop(key, None)

    def _leave_closed_pool(self, waiter: _Waiter | None) -> PoolClosed:
        """Under the lock: the error for a checkout that finds the pool closed."""
        if waiter is not None:
            self._stats["requests_errors"] += 1
        return PoolClosed(f"pool {self.name!r} is closed")

    def _leave_queue(self, waiter: _Waiter) -> None:
        """Under the lock: take a waiter off the queue (wherever it is)."""
        head = bool(self._waiters) and self._waiters[0] is waiter
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)
        if head:
            self._wake_next_waiter()

    def _grow(self) -> int:
        """Under the lock: reserve slots for the connections to open now; return how many.

        One per waiting checkout not already covered by a connection being
        opened, or up to ``minconn`` once the pool is in use; never beyond
        ``maxconn``. While the server is failing, a single attempt at a time,
        after the backoff delay.
        """
        if self.closed:
            return 0
        want = len(self._waiters) - self._opening
        if self._housekeeper is not None:
            want = max(want, self.minconn - self._size())
        want = min(want, self.maxconn - self._size())
        if want <= 0:
            return 0
        if self._backoff:
            if self._opening or time.monotonic() < self._next_connect_at:
                return 0
            want = 1
        self._opening += want
        return want

    def _spawn(self, count: int) -> None:
        """Outside the lock: open ``count`` connections in background threads."""
        for _ in range(count):
            try:
                threading.Thread(
                    target=self._open_connection, name=f"flask-pgpool-{self.name}-connect", daemon=True
                ).start()
            except BaseException:
                with self._lock:
                    self._opening -= 1
                raise

    def _wait_time(self, waiter: _Waiter, remaining: float) -> float:
        # The first in line wakes when the backoff ends, to start the next attempt.
        with self._lock:
            now = time.monotonic()
            if (
                self._waiters
                and self._waiters[0] is waiter
                and self._next_connect_at > now
                and self._size() < self.maxconn
            ):
                return max(0.001, min(remaining, self._next_connect_at - now))
        return remaining

    def _timeout_error(self, timeout: float) -> PoolTimeout:
        """Under the lock: a PoolTimeout that says why and what to tune."""
        # Name the setting only when the limit came from it, not from getconn(timeout=...).
        limit = f"{timeout:g} s" + (" (timeout, PGPOOL_TIMEOUT)" if timeout == self.timeout else "")
        if self._backoff and self._last_connect_error:
            return PoolTimeout(
                f"pool {self.name!r}: could not connect to the database within {limit}: "
                f"{self._last_connect_error}. Check that the server is up "
                f"and that the connection string (PGPOOL_DSN) is right"
            )
        if self._opening and len(self._slots) < self.maxconn:
            return PoolTimeout(
                f"pool {self.name!r}: no connection within {limit}: "
                f"a new connection is still being opened; the server or the network is slow to "
                f"answer (connect_timeout, PGPOOL_CONNECT_TIMEOUT)"
            )
        return PoolTimeout(
            f"pool {self.name!r}: no connection free within {timeout:g} s; all {self.maxconn} "
            f"are in use. Raise maxconn (PGPOOL_MAXCONN) or timeout (PGPOOL_TIMEOUT), "
            f"or find the requests that hold connections for long"
        )

    def _usable(self, conn: connection, deadline: float) -> bool:
        """Outside the lock: decide at checkout whether an idle connection may be handed out."""
        slot = self._slots[id(conn)]
        now = time.monotonic()
        if now >= slot.expires:
            return False
        if conn.closed or conn.get_transaction_status() != TRANSACTION_STATUS_IDLE:
            alive = False
        elif not self.health_check:
            return True
        else:
            state = socket_state(conn, slot.poller)
            needs_ping = state is SocketState.UNSURE or slot.last_used <= self._suspect_before
            if self.ping_after is not None and now - slot.last_used >= self.ping_after:
                needs_ping = True
            alive = state is not SocketState.DEAD
            if alive and needs_ping:
                # Half the time left at most, so that a silent network leaves
                # time to open another connection.
                alive = ping(conn, min(self._ping_timeout(), max((deadline - now) / 2, 0.05)))
        if not alive:
            with self._lock:
                self._stats["connections_lost"] += 1
                # Connections idle since before this one died are likely dead too.
                self._suspect_before = max(self._suspect_before, slot.last_used)
            _log.info("pool %r: discarded a connection the server had closed", self.name)
        return alive

    def _ping_timeout(self) -> float:
        return float(min(self.timeout, self._connect_timeout or self.timeout))

    # -- connecting ------------------------------------------------------

    def _open_connection(self) -> None:
        """In a background thread: fill a slot reserved by ``_grow``."""
        started = time.monotonic()
        try:
            conn = self._connect()
        except BaseException as exc:
            self._connect_failed(started, exc)
            return
        now = time.monotonic()
        jitter = 1.0 - random.uniform(0.0, _LIFETIME_JITTER)
        slot = Slot(
            conn=conn,
            expires=now + self.max_lifetime * jitter,
            last_used=now,
            session=session_of(conn),
            poller=poller_for(conn),
        )
        # Before the connection is handed over, so observers see its connect
        # before its checkout.
        _log.debug("pool %r: opened a connection in %.0f ms", self.name, (now - started) * 1000)
        self._notify("connect", now - started)
        with self._lock:
            self._opening -= 1
            self._stats["connections_num"] += 1
            self._stats["connections_ms"] += int((now - started) * 1000)
            recovered = self._last_connect_error if self._backoff else None
            self._next_connect_at = 0.0
            self._backoff = 0.0
            self._last_connect_error = None
            # Closed meanwhile, or shrunk by resize() below what is open.
            stale = self.closed or self._size() >= self.maxconn
            spawn = 0
            if not stale:
                self._slots[id(conn)] = slot
                self._give_back(conn)
                spawn = self._grow()
        if stale:
            self._close(conn)
            return
        if recovered:
            _log.info("pool %r: connected again after: %s", self.name, recovered)
        self._spawn(spawn)

    def _connect(self) -> connection:
        """Open and set up one connection; outside the lock."""
        conn = None
        try:
            dsn, kwargs = self._connect_params()
            conn = cast(connection, psycopg2.connect(dsn, **kwargs))
            if self.read_only:
                conn.set_session(readonly=True)
            if self.configure is not None:
                self.configure(conn)
                if conn.get_transaction_status() != TRANSACTION_STATUS_IDLE:
                    conn.rollback()
        except BaseException:
            if conn is not None:
                self._close(conn)
            raise
        return conn

    def _connect_failed(self, started: float, exc: BaseException) -> None:
        message = dsnlib.redact(str(exc).strip() or type(exc).__name__, self._secrets)
        with self._lock:
            self._opening -= 1
            self._stats["connections_num"] += 1
            self._stats["connections_errors"] += 1
            self._stats["connections_ms"] += int((time.monotonic() - started) * 1000)
            first = not self._backoff
            self._backoff = min(_BACKOFF_MAX, self._backoff * 2 or _BACKOFF_FIRST)
            self._next_connect_at = time.monotonic() + self._backoff * random.uniform(0.5, 1.0)
            self._last_connect_error = message
            self._wake_next_waiter()
        log = _log.warning if first else _log.debug
        log("pool %r: cannot connect (retrying with backoff): %s", self.name, message)
        self._notify("connect_error", time.monotonic() - started)

    def _connect_params(self) -> tuple[str, dict[str, Any]]:
        """The DSN (resolved on first use) and the arguments for psycopg2.connect."""
        if self._dsn is None or self._connect_kwargs is None:
            with self._dsn_lock:
                if self._dsn is None:
                    assert callable(self._dsn_source)
                    resolved = self._dsn_source()
                    self._secrets = dsnlib.secrets_of(resolved, self._connect_args)
                    self._dsn = resolved
                kwargs = dict(self._connect_args)
                # A server that does not answer must fail the connect, not hang it.
                if (
                    self._connect_timeout
                    and "connect_timeout" not in kwargs
                    and "connect_timeout" not in dsnlib.parse(self._dsn)
                ):
                    kwargs["connect_timeout"] = self._connect_timeout
                self._connect_kwargs = kwargs
        return self._dsn, self._connect_kwargs

    def _resolve_dsn(self) -> str:
        return self._connect_params()[0]

    # -- return ----------------------------------------------------------

    def _reset(self, conn: connection, slot: Slot) -> bool:
        """Outside the lock: make a returned connection reusable, or say it is not."""
        try:
            status = conn.get_transaction_status() if not conn.closed else None
            if status in (TRANSACTION_STATUS_INTRANS, TRANSACTION_STATUS_INERROR):
                with bounded(conn, self._ping_timeout()) as watchdog:
                    conn.rollback()
                if watchdog.fired:
                    raise psycopg2.OperationalError("rollback did not finish in time")
            elif status != TRANSACTION_STATUS_IDLE:
                raise psycopg2.InterfaceError("connection closed, lost, or still running a query")
            elif self.health_check and socket_state(conn, slot.poller) is SocketState.DEAD:
                raise psycopg2.OperationalError("the server closed the connection while it was checked out")
            if session_of(conn) != slot.session:
                restore_session(conn, slot.session)
        except Exception as exc:
            with self._lock:
                self._stats["returns_bad"] += 1
            _log.info(
                "pool %r: discarded a connection returned broken: %s",
                self.name,
                dsnlib.redact(str(exc).strip(), self._secrets),
            )
            return False
        return time.monotonic() < slot.expires

    def _give_back(self, conn: connection) -> None:
        """Under the lock: hand a healthy connection to the first waiter, or make it idle."""
        if self._waiters:
            waiter = self._waiters.popleft()
            waiter.conn = conn
            waiter.event.set()
            if self._next_connect_at:
                # The new first in line owns the backoff timer now.
                self._wake_next_waiter()
        else:
            self._pool.append(conn)

    def _forget(self, conn: connection) -> None:
        """Under the lock: the connection leaves the pool; its slot is free."""
        self._slots.pop(id(conn), None)
        self._wake_next_waiter()
        if self._size() < self.minconn:
            self._housekeeper_wake.set()

    def _wake_next_waiter(self) -> None:
        if self._waiters:
            self._waiters[0].event.set()

    def _close(self, conn: connection) -> None:
        """Outside the lock: close a connection that leaves the pool (bounded in time)."""
        close_quietly(conn, self._ping_timeout())

    # -- housekeeping ----------------------------------------------------

    def _start_housekeeper(self) -> None:
        if self._housekeeper is None and not self.closed:
            stop = threading.Event()
            self._housekeeper_stop = stop
            thread = threading.Thread(
                target=_housekeep,
                args=(weakref.ref(self), stop, self._housekeeper_wake),
                name=f"flask-pgpool-{self.name}",
                daemon=True,
            )
            self._housekeeper = thread
            thread.start()

    def _stop_housekeeper(self) -> None:
        self._housekeeper_stop.set()
        self._housekeeper_wake.set()
        self._housekeeper = None

    def _housekeeping_interval(self) -> float:
        periods = [self.max_idle, self.max_lifetime]
        if self.leak_timeout is not None:
            periods.append(self.leak_timeout)
        return max(0.05, min(5.0, min(periods) / 4))

    def _tidy(self) -> None:
        """Close expired and surplus idle connections, report leaks, refill to minconn."""
        now = time.monotonic()
        closing: list[connection] = []
        leaks: list[Slot] = []
        with self._lock:
            if self.closed or self._pid != os.getpid():
                return
            # Oldest first, so that the surplus closed is the least used.
            for conn in list(self._pool):
                slot = self._slots[id(conn)]
                expired = now >= slot.expires
                idle_too_long = now - slot.last_used >= self.max_idle and self._size() > self.minconn
                if expired or idle_too_long:
                    self._pool.remove(conn)
                    self._slots.pop(id(conn), None)
                    closing.append(conn)
            if self.leak_timeout is not None:
                for conn in self._used.values():
                    slot = self._slots[id(conn)]
                    if not slot.leak_reported and now - slot.checked_out >= self.leak_timeout:
                        slot.leak_reported = True
                        leaks.append(slot)
            spawn = self._grow()
        self._spawn(spawn)
        for conn in closing:
            self._close(conn)
        if closing:
            _log.debug("pool %r: closed %d idle or expired connection(s)", self.name, len(closing))
        for slot in leaks:
            _log.warning(
                "pool %r: a connection has been checked out for %.1f s (leak_timeout, "
                "PGPOOL_LEAK_TIMEOUT); it was checked out here:\n%s",
                self.name,
                now - slot.checked_out,
                "".join(slot.stack.format()) if slot.stack else "(stack not recorded)\n",
            )

    # -- processes -------------------------------------------------------

    def _reset_process_state(self) -> None:
        """Start empty, as in a new process. Inherited connections are dropped,
        never closed: closing them would end the parent's sessions (and psycopg2
        does not close a connection of another process when it is freed)."""
        # Before any lock is made: under gevent they must be gevent's.
        _green.ensure_cooperative()
        self._lock = threading.Lock()
        # Another thread of the parent may have held it at the fork.
        self._dsn_lock = threading.Lock()
        self._pid = os.getpid()
        self._pool = []
        self._used = {}
        self._rused = {}
        self._keys = 0
        self._slots = {}
        self._opening = 0
        self._waiters = collections.deque()
        self._stats = collections.Counter()
        self._next_connect_at = 0.0
        self._backoff = 0.0
        self._last_connect_error = None
        self._suspect_before = float("-inf")
        self._housekeeper = None
        self._housekeeper_stop = threading.Event()
        self._housekeeper_wake = threading.Event()

    def _locked(self) -> threading.Lock:
        """The pool's lock, after making sure the pool belongs to this process.

        A forked child makes its own state here, on first use, not in the fork
        hook: a gunicorn gevent worker monkey-patches threading after the fork,
        and locks made before that would block every greenlet.
        """
        if self._pid != os.getpid():
            with _fork_lock:
                if self._pid != os.getpid():
                    self._reset_process_state()
        return self._lock

    def _check_open(self) -> None:
        if self.closed:
            raise PoolClosed(f"pool {self.name!r} is closed")

    def _size(self) -> int:
        return len(self._slots) + self._opening


_fork_lock = threading.Lock()


def _after_fork_in_child() -> None:
    # Another thread of the parent may have held it at the fork. The pools
    # themselves are reset on their first use in the child (see _locked).
    global _fork_lock
    _fork_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _housekeep(
    ref: weakref.ReferenceType[ConnectionPool], stop: threading.Event, wake: threading.Event
) -> None:
    """The pool's background thread; it holds the pool only weakly."""
    while not stop.is_set():
        pool = ref()
        if pool is None:
            return
        interval = pool._housekeeping_interval()
        try:
            pool._tidy()
        except Exception:
            _log.exception("pool %r: housekeeping failed", pool.name)
        del pool
        wake.wait(interval)
        wake.clear()


def _check_sizes(minconn: int, maxconn: int) -> None:
    if isinstance(minconn, bool) or not isinstance(minconn, int) or minconn < 0:
        raise ValueError(f"minconn must be a whole number >= 0, got {minconn!r}")
    if isinstance(maxconn, bool) or not isinstance(maxconn, int) or maxconn < 1:
        raise ValueError(f"maxconn must be a whole number >= 1, got {maxconn!r}")
    if minconn > maxconn:
        raise ValueError(f"minconn ({minconn}) must not be greater than maxconn ({maxconn})")


def _positive(what: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{what} must be a number of seconds > 0, got {value!r}")
    return float(value)
