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

This module is the facade; the parts live beside it: its options
(``_options``), the per-connection record and its policy (``_record``), the
checkout and the wait queue (``_checkout``, ``_waiting``), opening
connections and the backoff (``_opener``, ``_connector``), the return to the
pool (``_returning``, ``_session``), the background thread
(``_housekeeper``), per-process state and fork (``_state``, ``_fork``),
counters and observers (``_stats``).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

from psycopg2.extensions import STATUS_READY, TRANSACTION_STATUS_IDLE, connection
from psycopg2.pool import ThreadedConnectionPool

from . import _checkout, _fork, _housekeeper, _maintenance, _messages, _returning
from . import _dsn as dsnlib
from ._connector import Connector
from ._credentials import ArgsSource, DsnSource
from ._failover import READ_ONLY, FailoverGuard
from ._options import check_options
from ._session import Reset
from ._state import ProcessState, after_fork, after_patch
from ._stats import STATS_KEYS, Observer, Observers, snapshot
from ._timeouts import DEFAULT_NETWORK_TIMEOUT
from ._waiting import give_back

__all__ = ["STATS_KEYS", "ConnectionPool"]

_monotonic = time.monotonic
_IDLE = TRANSACTION_STATUS_IDLE
_READY = STATUS_READY
_READ_ONLY = READ_ONLY  # see _failover
_getpid = os.getpid

# _LOCKING: the fast paths of getconn() and putconn() take the lock with
# acquire() and release(), not ``with``, which costs CPython 3.11 about 1,000
# instructions more per lock section. acquire() stays outside the try, as in
# the standard library's logging handlers: an acquire() interrupted by an
# exception must not release a lock another thread holds.

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
        dsn: DsnSource = "",
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
        network_timeout: float | None = DEFAULT_NETWORK_TIMEOUT,
        statement_timeout: float | None = None,
        read_only: bool = False,
        configure: Callable[[connection], None] | None = None,
        connect_args: ArgsSource = None,
        reset: Reset | None = None,
        label: Callable[[str], str] | None = None,
    ) -> None:
        """Create a pool; no connection is opened until the first :meth:`getconn`.

        ``minconn`` connections are kept open once the pool is in use, at most
        ``maxconn`` are ever open. ``dsn`` is a libpq connection string or URL,
        or a function returning one (called for every new connection). A
        checkout waits up to ``timeout`` seconds; at most ``max_waiting``
        checkouts wait (0: no limit). Idle connections above ``minconn`` close after ``max_idle``
        seconds, every connection after ``max_lifetime`` (with jitter). With
        ``health_check``, a checkout looks at the socket (no round trip) and
        pings a connection idle for ``ping_after`` seconds (None: never, 0:
        always). ``leak_timeout`` logs where a connection held longer was
        checked out. ``connect_timeout`` bounds a connect (and a ping or
        rollback). ``network_timeout`` gives up on a connection whose network
        went silent (TCP keepalives and ``tcp_user_timeout``; None or 0: off);
        ``statement_timeout`` has the server cancel longer statements (None:
        off). ``read_only`` makes every transaction read-only.
        ``configure(conn)`` runs on each new connection, ``connect_args`` (a
        dict, or a function returning one for every new connection) go to
        ``psycopg2.connect()``. ``reset`` runs on each returned connection: SQL
        such as ``"DISCARD ALL"`` or a function given the connection.
        ``label(option)`` names an option in messages (the Flask extension
        gives its ``PGPOOL_`` keys).
        """
        options = check_options(
            minconn, maxconn, timeout=timeout, max_waiting=max_waiting, connect_timeout=connect_timeout,
            max_lifetime=max_lifetime, leak_timeout=leak_timeout, health_check=health_check, ping_after=ping_after,
            max_idle=max_idle, network_timeout=network_timeout, statement_timeout=statement_timeout,
            kinds={
                "dsn": dsn, "name": name, "health_check": health_check, "read_only": read_only,
                "configure": configure, "connect_args": connect_args, "reset": reset, "label": label,
            },
        )
        # psycopg2's __init__ would open minconn connections at once; this pool
        # opens none before it is used, and keeps its state in _state.
        self.minconn, self.maxconn, self.closed, self.name = minconn, maxconn, False, name
        # Plain attributes, copied out of options: getconn() and putconn() read some on every request.
        self.timeout, self.max_waiting, self.max_lifetime = options.timeout, options.max_waiting, options.max_lifetime
        self.leak_timeout, self.reset, self._label = options.leak_timeout, reset, label or str
        self._health, self._quick_age, self._ping_limit = options.health, options.quick_age, options.ping_limit
        self._connector = Connector(
            dsn, connect_args=connect_args, connect_timeout=connect_timeout, read_only=read_only, configure=configure,
            network_timeout=options.network_timeout, statement_timeout=options.statement_timeout, label=self._label,
        )
        # Failover: connections whose server stopped taking writes are not handed out.
        self._failover = FailoverGuard(name, enabled=not read_only, timeout=self._ping_limit)
        self._observers = Observers(name)
        self._housekeeper = _housekeeper.Housekeeper(self)
        self._state = ProcessState()
        _fork.track(self)

    # -- options shown as attributes, as psycopg2's pool and earlier versions did --

    @property
    def health_check(self) -> bool:
        """Whether a checkout checks an idle connection (the ``health_check`` option)."""
        return self._health.health_check

    @property
    def ping_after(self) -> float | None:
        """Seconds of idleness after which the checkout check pings (``ping_after``)."""
        return self._health.ping_after

    @property
    def max_idle(self) -> float:
        """Seconds an idle connection above ``minconn`` is kept (``max_idle``)."""
        return self._health.max_idle

    @property
    def read_only(self) -> bool:
        """Whether every connection is a read-only session (``read_only``)."""
        return self._connector.read_only

    @property
    def network_timeout(self) -> float | None:
        """Seconds after which a connection on a silent network is given up (``network_timeout``), or None."""
        return self._connector.network_timeout

    @property
    def statement_timeout(self) -> float | None:
        """Seconds after which the server cancels a statement (``statement_timeout``), or None."""
        return self._connector.statement_timeout

    @property
    def configure(self) -> Callable[[connection], None] | None:
        """The function run on each new connection (``configure``), or None."""
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
            return _checkout.getconn_keyed(self, key, timeout)
        state = self._state
        # _fork.stale() written out: this runs on every checkout.
        if state.pid != _getpid() or state.lock_factory is not threading.Lock:
            state = _fork.current_state(self)
        lock = state.lock
        lock.acquire()  # not ``with``: see _LOCKING
        try:
            if self.closed:
                raise _messages.closed_error(self)
            state.counters.requests_num += 1
            record = None
            # The common case, in one lock section: an idle connection, nobody waiting.
            if state.idle and not state.waiters:
                record = state.idle.pop()
                record.in_use = True
        finally:
            lock.release()
        started = _monotonic()
        if record is not None:
            # The common case of check_out(), written out: a fresh record (no
            # ping due, nothing suspect) on a quiet socket. Anything else, or
            # an error of the poll, goes to check_out(), which decides anew.
            conn = record.conn
            try:
                usable = (
                    record.fresh(
                        started, state.generation, state.suspect_before, self._failover.suspect_before, self._quick_age
                    )
                    and state.housekeeper_started
                    and self.leak_timeout is None
                    and not conn.closed
                    and conn.get_transaction_status() == _IDLE
                    and not record.poller.poll(0)
                )
            except (OSError, ValueError):
                usable = False
            except BaseException:
                # Interrupted in the poll: the slot is freed all the same.
                _checkout.discard(self, state, record, lost=False)
                raise
            if usable:
                record.checked_out_at = started
                record.leak_reported = False
                if self._observers.callbacks:
                    self._observers.notify("checkout", 0.0)
                return conn
        limit = self.timeout if timeout is None else timeout
        if record is not None and _checkout.check_out(self, state, record, started, started + limit):
            if self._observers.callbacks:
                self._observers.notify("checkout", 0.0)
            return record.conn
        record = _checkout.wait_for_connection(self, state, started, limit)
        if self._observers.callbacks:
            self._observers.notify("checkout", _monotonic() - started)
        return record.conn

    # -- return ------------------------------------------------------------

    def putconn(self, conn: connection | None = None, key: Hashable | None = None, close: bool = False) -> None:
        """Give a connection back. Its slot is freed whatever happens.

        An open transaction is rolled back; a broken, expired or ``close=True``
        connection is closed instead of pooled. Returning a connection that is
        not checked out from this pool raises :class:`psycopg2.pool.PoolError`.
        """
        # No pid check here (it costs a system call): in a child that forked
        # without Python's fork hooks, the first getconn() resets the pool, and
        # a connection inherited from the parent is then unknown here.
        state = self._state
        # The common case, in one lock section: a connection returned as it
        # was handed out (nothing to roll back or restore). Written out flat,
        # for it runs on every request: it is _returning's release() and
        # may_keep(), and _waiting's give_back(), which the slow path uses.
        record = state.records.get(id(conn)) if key is None and not close else None
        if (
            record is not None
            and self.reset is None
            # record.conn is conn: a record holds its connection, so no other has its id meanwhile.
            and not (conn := record.conn).closed
            and conn.get_transaction_status() == _IDLE
            and conn.status == _READY  # else the driver thinks a transaction is open
            # session_of(conn) == record.session, written out
            and (conn.autocommit, conn.isolation_level, conn.readonly, conn.deferrable) == record.session
            and not (record.on_primary and conn.get_parameter_status(_READ_ONLY) == "on")
        ):
            now = _monotonic()
            lock = state.lock
            lock.acquire()  # not ``with``: see _LOCKING
            try:
                kept = (
                    record.in_use  # else returned twice: the slow path says so
                    and record.key is None
                    and not self.closed
                    and now < record.expires
                    and record.generation >= state.generation
                    and len(state.records) + state.opening <= self.maxconn
                )
                if kept:
                    record.in_use = False
                    record.last_used = now
                    if state.waiters:
                        give_back(state, record)
                    else:
                        state.idle.append(record)
            finally:
                lock.release()
            if kept:
                if self._observers.callbacks:
                    self._observers.notify("return", now - record.checked_out_at)
                return
        _returning.putconn_slow(self, state, conn, key, close)

    # -- managing the pool ---------------------------------------------------

    def closeall(self) -> None:
        """Close the pool: idle connections now, connections in use when returned.

        Waiting checkouts fail with :class:`PoolClosed`. Calling it again does
        nothing. In a child process it never touches the parent's connections.
        """
        _maintenance.close_pool(self)

    close = closeall

    def resize(self, minconn: int, maxconn: int) -> None:
        """Change the pool's bounds at run time.

        Growing takes effect at once (waiting checkouts may open connections);
        shrinking closes idle connections now and surplus ones when returned.
        """
        _maintenance.resize(self, minconn, maxconn)

    def check(self) -> None:
        """Test every idle connection with a round trip; replace the dead ones."""
        _maintenance.check(self)

    def drain(self) -> None:
        """Retire every connection open or being opened now: idle ones at once
        (as many new ones are opened), the others when they are returned.

        New connections get the credentials of the moment (a callable DSN or
        ``connect_args`` is called for each). Nothing fails because of it: a
        checkout waits for a new connection as it would for a returned one.
        Returns at once; it takes the pool's lock, so call it from a thread,
        not from a signal handler.
        """
        _maintenance.drain(self)

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
        """Under the lock: what :meth:`get_stats` returns (see :func:`flask_pgpool._stats.snapshot`)."""
        return snapshot(self, state)

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
        """The connection string with its password masked (the last one used, if it is a callable)."""
        dsn = self._connector.resolved_dsn
        return "<not resolved yet>" if dsn is None else dsnlib.mask_dsn(dsn)

    def connection_string(self) -> str:
        """The real connection string (a callable is called). Keep it secret."""
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

    # -- processes -------------------------------------------------------------------

    def _after_fork(self) -> None:
        """In a child process: start empty (see :func:`flask_pgpool._state.after_fork`)."""
        after_fork(self)

    def _after_patch(self) -> None:
        """gevent patched this process after the state was made (see :func:`flask_pgpool._state.after_patch`)."""
        after_patch(self)
