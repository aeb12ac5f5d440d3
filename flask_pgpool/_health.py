"""Is an idle connection still alive? Answered without a round trip when possible.

A server that ends a session (shutdown, restart, ``pg_terminate_backend``,
``idle_session_timeout``) first writes a FATAL ErrorResponse on the socket and
then closes it. A healthy idle connection has nothing to read. So one
non-blocking ``poll()`` tells healthy from dead for most deaths; only what the
socket cannot show (a silent network cut) needs a real query, and that query
is bounded by a watchdog that shuts the socket down when it expires.
"""

from __future__ import annotations

import contextlib
import enum
import heapq
import itertools
import os
import select
import socket
import threading
import time
from collections.abc import Iterator

from psycopg2.extensions import TRANSACTION_STATUS_IDLE, connection

from ._queries import fetch_one

__all__ = ["SocketState", "Watchdog", "bounded", "peek_state", "ping", "poller_for", "quick_state"]

_PEEK_BYTES = 1
# How late a watchdog may fire, in seconds: its timeouts are whole seconds.
_GRANULARITY = 0.05
_DEAD_EVENTS = select.POLLERR | select.POLLHUP | select.POLLNVAL


class SocketState(enum.Enum):
    QUIET = "quiet"  # nothing to read: alive as far as the socket can tell
    DEAD = "dead"  # closed by the server, or it sent a fatal error
    UNSURE = "unsure"  # something arrived (a NOTIFY, a notice, TLS data): ask the server


def poller_for(conn: connection) -> select.poll:
    """A poll object watching the connection's socket, to reuse for its life."""
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN | select.POLLPRI)
    return poller


def quick_state(conn: connection) -> SocketState:
    """What the driver knows without a system call: DEAD if the connection is
    closed or not idle (a query still running, a transaction left open)."""
    if conn.closed or conn.get_transaction_status() != TRANSACTION_STATUS_IDLE:
        return SocketState.DEAD
    return SocketState.QUIET


def peek_state(conn: connection, poller: select.poll) -> SocketState:
    """Look at the connection's socket without reading from it or blocking:
    one ``poll()`` system call for a healthy connection.

    ``poller`` comes from :func:`poller_for`, made once per connection.
    """
    if conn.closed or conn.get_transaction_status() != TRANSACTION_STATUS_IDLE:
        return SocketState.DEAD
    try:
        events = poller.poll(0)
    except (OSError, ValueError):
        return SocketState.DEAD
    if not events:
        return SocketState.QUIET
    if events[0][1] & _DEAD_EVENTS:
        return SocketState.DEAD
    if conn.info.ssl_in_use:
        # Encrypted bytes tell us nothing; let a ping decide.
        return SocketState.UNSURE
    first = _peek(conn.fileno())
    if first is None:
        return SocketState.UNSURE
    # b"" is end of file. An ErrorResponse ("E") on an idle session is always
    # FATAL: the server is about to close it.
    return SocketState.DEAD if first in (b"", b"E") else SocketState.UNSURE


def _peek(fd: int) -> bytes | None:
    sock = socket.socket(fileno=fd)
    try:
        return sock.recv(_PEEK_BYTES, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return None
    except OSError:
        return b""
    finally:
        # The fd belongs to libpq: give it back without closing it.
        sock.detach()


def ping(conn: connection, timeout: float) -> bool:
    """One ``SELECT 1`` round trip, given up after ``timeout`` seconds.

    On time-out the socket is shut down, which wakes libpq from its wait and
    leaves the connection broken: the caller discards it.
    """
    ok = False
    with bounded(conn, timeout) as watchdog:
        try:
            # In autocommit the ping is one round trip and opens no transaction.
            autocommit = conn.autocommit
            conn.autocommit = True
            ok = fetch_one(conn, "SELECT 1") == (1,)
            conn.autocommit = autocommit
        except Exception:
            ok = False
    return ok and not watchdog.fired and not conn.closed


@contextlib.contextmanager
def bounded(conn: connection, timeout: float) -> Iterator[Watchdog]:
    """Run the block's exchange with the server for at most ``timeout`` seconds.

    libpq waits for the server without a limit; past ``timeout`` the socket is
    shut down, the pending call fails, and the connection is broken (check
    ``watchdog.fired`` and discard it).
    """
    watchdog = Watchdog(conn, timeout)
    try:
        yield watchdog
    finally:
        watchdog.disarm()


class Watchdog:
    """Shuts a connection's socket down if it is still armed after ``timeout``.

    Arming and disarming share the timer thread's lock: a returned connection
    with an open transaction arms one per rollback, so it must be cheap.
    """

    __slots__ = ("_armed", "_fd", "_lock", "fired")

    def __init__(self, conn: connection, timeout: float) -> None:
        self._armed = True
        self.fired = False
        self._fd = conn.fileno()
        self._lock = _timers.add(time.monotonic() + max(timeout, 0.001), self)

    def fire(self) -> None:
        """Called by the timer thread, holding the timers' lock."""
        if not self._armed:
            return
        self._armed = False
        self.fired = True
        try:
            # A duplicate descriptor shares the socket: shutting it down
            # ends the stuck exchange; closing the duplicate frees only it.
            dup = socket.socket(fileno=os.dup(self._fd))
            try:
                dup.shutdown(socket.SHUT_RDWR)
            finally:
                dup.close()
        except OSError:
            pass

    def disarm(self) -> bool:
        """Stop the watchdog; return whether it had already fired."""
        with self._lock:
            self._armed = False
        return self.fired


class _Timers:
    """One background thread for every watchdog of the process.

    A thread per watchdog would cost a thread start on every return of a
    connection with an open transaction; here arming is a heap push.
    Disarmed watchdogs are dropped when their time comes.
    """

    def __init__(self) -> None:
        self._reset()
        self._pid = 0  # no thread in this process yet
        self._lock_factory: object = None

    def _reset(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self.lock = self._cond  # guards the heap and every watchdog's state
        self._heap: list[tuple[float, int, Watchdog]] = []
        self._order = itertools.count()

    def add(self, deadline: float, watchdog: Watchdog) -> threading.Condition:
        """Arm ``watchdog``; return the lock that guards it."""
        # A new process, or one gevent patched since the thread started: under
        # gevent the timer must be a greenlet waiting on gevent's lock.
        if self._pid != os.getpid() or self._lock_factory is not threading.Lock:
            self._start_in_this_process()
        with self._cond:
            sooner = not self._heap or deadline < self._heap[0][0]
            heapq.heappush(self._heap, (deadline, next(self._order), watchdog))
            if sooner:
                self._cond.notify()
            return self._cond

    def _start_in_this_process(self) -> None:
        """Fresh state and a thread, on the first watchdog of a process.

        Made then, not in the fork hook: a gunicorn gevent worker patches
        threading after the fork, and the lock must then be gevent's. The
        thread starts outside every lock: under gevent, starting it switches
        to other greenlets.
        """
        with _start_lock:
            if self._pid == os.getpid() and self._lock_factory is threading.Lock:
                return
            # A thread left from before a gevent patch keeps its own lock and
            # heap, and fires the watchdogs armed before.
            self._reset()
            self._pid = os.getpid()
            self._lock_factory = threading.Lock
            cond, heap = self._cond, self._heap
        threading.Thread(target=_run, args=(cond, heap), name="flask-pgpool-watchdog", daemon=True).start()


def _run(cond: threading.Condition, heap: list[tuple[float, int, Watchdog]]) -> None:
    """The timer thread: its lock and heap are its own, kept if the process is patched later."""
    with cond:
        while True:
            now = time.monotonic()
            while heap and heap[0][0] <= now:
                # Under the lock, so that a disarm cannot race the shutdown.
                heapq.heappop(heap)[2].fire()  # does nothing if disarmed
            # Most watchdogs are disarmed long before they are due; waking at
            # most every _GRANULARITY seconds drops them in batches instead
            # of waking once per returned connection.
            cond.wait(max(heap[0][0] - now, _GRANULARITY) if heap else None)


_timers = _Timers()
_start_lock = threading.Lock()


def _after_fork_in_child() -> None:
    # The parent's timer thread is gone and may have held its locks at the fork;
    # the child's first watchdog starts afresh (see _Timers.add).
    global _start_lock
    _start_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
