"""Fork safety: a child process starts with empty pools of its own.

``os.register_at_fork`` resets every pool in the child; a pid check in the
pool catches a fork that bypassed Python's hooks (a C extension or an
embedding server calling ``fork()`` directly). In a child that gevent is about
to patch (a gunicorn gevent worker), the pool's state is made again on first
use, after the patch.

The child never uses its parent's connections, and never closes them the
usual way either: ``close()`` would send a Terminate message and end the
parent's sessions. Instead the child points the inherited descriptors at
/dev/null: the sockets are released (only the parent holds them now), and a
stray use of an inherited connection writes nowhere instead of onto a socket
the child has since opened under the same descriptor number.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from psycopg2.extensions import connection

from . import _green

if TYPE_CHECKING:
    from ._pool import ConnectionPool
    from ._state import ProcessState

__all__ = ["connecting", "current_state", "release_sockets", "stale", "track", "unhooked_fork_warning"]

_log = logging.getLogger("flask_pgpool")
_pools: weakref.WeakSet[ConnectionPool] = weakref.WeakSet()
_lock = threading.Lock()

#: Connections being opened in background threads: a token for each, with the
#: moment by which its connect gives up. A fork waits for them (see _before_fork).
connecting: dict[object, float] = {}
# How long a fork waits for a connect without a connect_timeout.
UNBOUNDED_CONNECT_WAIT = 10.0


def track(pool: ConnectionPool) -> None:
    _pools.add(pool)


def stale(state: ProcessState) -> bool:
    """Is ``state`` not this process's, or made before gevent patched threading?

    Checked on every checkout: a comparison of two attributes with module globals.
    """
    return state.pid != os.getpid() or state.lock_factory is not threading.Lock


def current_state(pool: ConnectionPool) -> ProcessState:
    """The pool's state for this process.

    New if the process forked unseen. Made again if gevent patched the
    process after the state was made (an app created before
    ``gevent.monkey.patch_all()``): its locks would block the whole process
    and psycopg2 would have no wait callback. The connections are kept.
    """
    with _lock:
        state = pool._state
        if state.pid != os.getpid():
            pool._after_fork()
        elif state.lock_factory is not threading.Lock:
            pool._after_patch()
    return pool._state


def release_sockets(conns: Iterable[connection]) -> None:
    """Let go of inherited connections' sockets without sending anything on them."""
    devnull = None
    try:
        for conn in conns:
            with contextlib.suppress(Exception):
                if conn.closed:
                    continue
                if devnull is None:
                    devnull = os.open(os.devnull, os.O_RDWR)
                os.dup2(devnull, conn.fileno())
    finally:
        if devnull is not None:
            os.close(devnull)


def _before_fork() -> None:
    """Let the connects under way finish before the process forks (bounded by their connect_timeout).

    A connection being opened has a socket that no pool lists yet: the child
    would inherit it and keep it open for its whole life, and after the
    connect the connection is the parent's. Once the thread has put it in its
    pool, the child releases it like any other (see :func:`release_sockets`).
    A sleep, not a lock: under gevent the connects are greenlets, which must run meanwhile.
    """
    if not connecting:
        return
    deadline = max(list(connecting.values()), default=0.0)  # a copy: connect threads change it meanwhile
    while connecting and time.monotonic() < deadline:
        time.sleep(0.005)
    if connecting:
        _log.warning(
            "flask-pgpool: forking while %d connection(s) are still being opened; "
            "the child process keeps their sockets open until it exits",
            len(connecting),
        )


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # maybe held by a parent thread at the fork
    connecting.clear()  # their threads are the parent's
    # A gunicorn gevent worker patches threading after the fork: a state made
    # now would hold the standard library's locks and thread-locals, which
    # block or are shared by every greenlet. It is made again on first use.
    provisional = _green.patch_pending()
    for pool in list(_pools):
        with contextlib.suppress(Exception):
            pool._after_fork()
            if provisional:
                pool._state.pid = 0


os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)


def unhooked_fork_warning() -> str | None:
    """What to change when this process is a uWSGI master that forks its workers unsafely, else None.

    uWSGI loads the app in its master (unless ``lazy-apps``) and forks the
    workers from C, without Python's fork hooks unless
    ``--py-call-uwsgi-fork-hooks``. A pool used in the master (an import-time
    query) has threads running there (connects refilling PGPOOL_MINCONN,
    housekeeping); forked without the hooks, a worker can inherit the
    interpreter's lock half-held and hang on its first request.
    """
    try:
        uwsgi: Any = importlib.import_module("uwsgi")  # only importable inside uWSGI
    except ImportError:
        return None
    options = getattr(uwsgi, "opt", {})
    if any(name in options for name in ("lazy-apps", "lazy", "py-call-uwsgi-fork-hooks")):
        return None
    try:
        in_master = uwsgi.worker_id() == 0
    except Exception:
        return None
    if not in_master:
        return None
    return (
        "uWSGI loads this app in its master and forks the workers without Python's fork hooks: "
        "if the app uses the database before the fork (a query at import time), a worker can hang. "
        "Add --py-call-uwsgi-fork-hooks (or --lazy-apps) to uWSGI's options"
    )
