"""Running under gevent: psycopg2 made cooperative, and setups that would block refused.

psycopg2 is a C extension that gevent cannot patch: without a wait callback
every query blocks the whole process, all greenlets with it. When gevent has
patched the process, the pool installs :func:`gevent_wait` as psycopg2's wait
callback the first time it is set up in that process (unless one is set
already, e.g. psycogreen's), and refuses a half-patched process in which its
own waits would block every greenlet.

gevent is imported only when the process has already imported it: a process
that does not use gevent pays nothing.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import psycopg2
from psycopg2 import extensions

from ._health import bounded

__all__ = [
    "BoundedConnect",
    "EventletNotSupported",
    "GeventSetupError",
    "bound_connects",
    "cancel_interrupted",
    "ensure_cooperative",
    "gevent_wait",
    "patch_pending",
]

_log = logging.getLogger("flask_pgpool")

# libpq treats a connect_timeout below 2 s as 2 s.
_MIN_CONNECT_TIMEOUT = 2.0


class GeventSetupError(RuntimeError):
    """gevent has patched the process in a way that would block every greenlet."""


class EventletNotSupported(RuntimeError):
    """eventlet has patched the process: the pool does not run there."""


def _refuse_eventlet() -> None:
    # eventlet's patched select module has no poll(), which the pool's health
    # check uses on every checkout, and eventlet itself is in maintenance
    # mode, advising against new uses: refused at set-up rather than failing
    # on the first connect.
    patcher = sys.modules.get("eventlet.patcher")
    if patcher is None:
        return
    if any(patcher.is_monkey_patched(module) for module in ("select", "socket", "thread")):
        raise EventletNotSupported(
            "eventlet has monkey-patched this process: flask-pgpool does not run under eventlet "
            "(its patched select module has no poll(), which the pool's health checks use). "
            "Serve the app with gevent instead (gunicorn --worker-class gevent, no eventlet.monkey_patch()), "
            "or with threads (gunicorn --worker-class gthread)"
        )


def _patched(monkey: Any, module: str) -> bool:
    return bool(monkey.is_module_patched(module))


def patch_pending() -> bool:
    """gevent is loaded but has not patched threading yet.

    That is the state of a gunicorn gevent worker right after the fork: its
    master imported gevent, and the worker patches the standard library
    before it serves. Locks made now would be the standard library's.
    """
    monkey = sys.modules.get("gevent.monkey")
    if monkey is None:
        return "gevent" in sys.modules
    return not _patched(monkey, "threading")


def ensure_cooperative() -> None:
    """Make psycopg2 cooperate with gevent if gevent has patched this process.

    Does nothing in a process gevent has not patched. Raises
    :class:`GeventSetupError` when gevent patched ``socket`` but not
    ``threading``: the pool's waits and background work use threading, and
    would then block every greenlet.
    """
    _refuse_eventlet()
    monkey = sys.modules.get("gevent.monkey")
    if monkey is None:
        return
    socket_patched = _patched(monkey, "socket")
    threading_patched = _patched(monkey, "threading")
    if not (socket_patched or threading_patched):
        return
    if not threading_patched:
        raise GeventSetupError(
            "gevent has patched socket but not threading (monkey.patch_all(thread=False)?): "
            "flask-pgpool waits for connections and opens them with threading, which would then "
            "block every greenlet. Call gevent.monkey.patch_all() with its defaults before "
            "importing the app (gunicorn -k gevent does)"
        )
    current = extensions.get_wait_callback()
    if current is None:
        # Imported now, outside any request: the callback must not import on its first wait.
        import gevent.socket  # noqa: F401

        extensions.set_wait_callback(gevent_wait)
        _log.info("flask-pgpool: gevent has patched this process; psycopg2 now waits through gevent")
    elif current is not gevent_wait:
        _log.debug("flask-pgpool: keeping the psycopg2 wait callback already set: %r", current)
        bound_connects()


def bound_connects() -> None:
    """Make sure a connect ends within its ``connect_timeout`` whatever wait callback is set.

    libpq applies ``connect_timeout`` only to blocking connects; with a wait
    callback the connect is asynchronous, and a callback that waits without
    a limit (psycogreen's, ``psycopg2.extras.wait_select``) would wait for
    ever on a server that accepts and never answers, holding the pool's slot.
    Such a callback is wrapped in :class:`BoundedConnect`, which calls it
    unchanged. Called before each connect: a callback set after the pool was
    made is wrapped too.
    """
    current = extensions.get_wait_callback()
    if current is None or current is gevent_wait or isinstance(current, BoundedConnect):
        return
    extensions.set_wait_callback(BoundedConnect(current))
    _log.debug("flask-pgpool: connects through the wait callback %r are bounded by connect_timeout", current)


class BoundedConnect:
    """A psycopg2 wait callback that bounds connects by ``connect_timeout``, around the one it wraps.

    While connecting, a watchdog shuts the socket down at the deadline: the
    wrapped callback's wait ends, and the connect fails with "timeout
    expired". Queries go to the wrapped callback untouched.
    """

    __slots__ = ("__wrapped__",)

    def __init__(self, callback: Any) -> None:
        self.__wrapped__ = callback

    def __call__(self, conn: Any) -> None:
        deadline = _connect_deadline(conn)
        if deadline is None:
            try:
                self.__wrapped__(conn)
            except psycopg2.Error:
                raise
            except BaseException:
                cancel_interrupted(conn)
                raise
            return
        with bounded(conn, deadline - time.monotonic()) as watchdog:
            try:
                self.__wrapped__(conn)
            except psycopg2.Error:
                if not watchdog.fired:
                    raise
        if watchdog.fired:
            raise psycopg2.OperationalError("timeout expired (connect_timeout)")

    def __repr__(self) -> str:
        return f"<flask-pgpool connect bound around {self.__wrapped__!r}>"


def gevent_wait(conn: Any) -> None:
    """psycopg2 wait callback: wait for the server through gevent's hub.

    While connecting, the wait is bounded by the connection's
    ``connect_timeout``, which libpq applies only to blocking connects.
    """
    from gevent.socket import wait_read, wait_write

    deadline = _connect_deadline(conn)
    try:
        _gevent_wait(conn, deadline, wait_read, wait_write)
    except psycopg2.Error:
        raise
    except BaseException:
        if deadline is None:
            cancel_interrupted(conn)
        raise


def _gevent_wait(conn: Any, deadline: float | None, wait_read: Any, wait_write: Any) -> None:
    while True:
        state = conn.poll()
        if state == extensions.POLL_OK:
            return
        timeout = None
        if deadline is not None:
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                raise psycopg2.OperationalError("timeout expired (connect_timeout)")
        try:
            if state == extensions.POLL_READ:
                wait_read(conn.fileno(), timeout)
            elif state == extensions.POLL_WRITE:
                wait_write(conn.fileno(), timeout)
            else:
                raise psycopg2.OperationalError(f"unexpected state from connection.poll(): {state!r}")
        except TimeoutError:
            raise psycopg2.OperationalError("timeout expired (connect_timeout)") from None


def cancel_interrupted(conn: Any) -> None:
    """Cancel the query whose wait was interrupted (a ``gevent.Timeout``, a killed greenlet).

    psycopg2 closes the connection when the wait callback raises, without a
    word to the server, which would go on running the query to its end.
    Not for a psycopg2 error: the query has ended then.
    """
    try:
        if not conn.closed:
            conn.cancel()
    except Exception:
        pass


def _connect_deadline(conn: Any) -> float | None:
    if conn.status != extensions.STATUS_SETUP:
        return None
    try:
        seconds = float(conn.info.dsn_parameters.get("connect_timeout") or 0)
    except (ValueError, psycopg2.Error):
        return None
    if seconds <= 0:
        return None
    return time.monotonic() + max(seconds, _MIN_CONNECT_TIMEOUT)
