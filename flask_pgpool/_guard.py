"""A connection kept past its request refuses to work.

A request's connection goes back to the pool when the request ends, and may
be handed to another request at once. Code that kept a reference (a global, a
thread that outlives the request) would then run inside another request's
transaction, or on an idle pooled connection. The extension mixes
:class:`LeaseGuard` into the app's connection class (the user's
``connection_factory``, if any): ``cursor()``, ``commit()`` and ``rollback()``
check that the lease they were checked out under is still open and that the
caller is not another app context, and raise :class:`StaleConnectionError`
otherwise. The pool itself knows nothing of this: its own work on an idle
connection is recognised by the module it comes from, and
:class:`LeasingPool` frees the connections ``getconn()`` hands out of their
old lease.
"""

from __future__ import annotations

import sys
import threading
import weakref
from collections.abc import Hashable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Protocol

import psycopg2
from psycopg2.extensions import connection

from . import _flask_compat as compat
from ._pool import ConnectionPool

__all__ = [
    "ENDED",
    "STREAMING",
    "LeaseGuard",
    "LeasingPool",
    "StaleConnectionError",
    "guarded_factory",
]


class _Ended:
    """What the ``ctx`` of a lease whose request has ended refers to: never a real context."""


_ENDED_MARK = _Ended()
#: The ``ctx`` of a lease whose request has ended (see _leases.Lease.ctx).
ENDED: weakref.ref[Any] = weakref.ref(_ENDED_MARK)
#: The lease whose streamed response is being sent in this thread.
STREAMING: ContextVar[Any] = ContextVar("flask_pgpool_streaming", default=None)
# The modules of the Flask glue; every other flask_pgpool module is the pool's.
_GLUE = frozenset(
    f"flask_pgpool.{name}"
    for name in (
        "_cli",
        "_extension",
        "_flask_compat",
        "_guard",
        "_leases",
        "_responses",
        "_streaming",
        "metrics",
        "testing",
    )
)


class StaleConnectionError(psycopg2.InterfaceError):
    """A connection was used after the request (app context) that checked it out ended.

    It is back in the pool and may already be another request's. A subclass
    of :class:`psycopg2.InterfaceError`, as for a closed connection.
    """


class _Lease(Protocol):
    #: A weak reference to the app context the lease belongs to, or ENDED.
    ctx: weakref.ref[Any]


if TYPE_CHECKING:
    _Connection = connection
else:
    _Connection = object


class LeaseGuard(_Connection):
    """Mixed into the app's connection class: refuses work once its lease has ended.

    ``cursor()``, ``commit()`` and ``rollback()`` are those of :func:`_guarded_methods`,
    written into each class :func:`guarded_factory` makes.
    """

    #: The lease it is checked out under (see _leases.Lease); None: not a request's.
    _pgpool_lease: _Lease | None = None


# Read as a module global by the guarded methods, which every cursor() of a
# request runs; called with None (see _flask_compat.app_context_or).
_app_context = compat.app_context_or


def _guarded_methods(base: type[connection]) -> dict[str, Any]:
    """``cursor()``, ``commit()`` and ``rollback()`` that check the lease, then call ``base``'s.

    ``base``'s methods are bound once here rather than found by ``super()``
    at every call (a super object and a walk of the MRO each time), which is
    most of what the check costs on a request.
    """
    base_cursor, base_commit, base_rollback = base.cursor, base.commit, base.rollback

    def any_cursor(self: Any, *args: Any, **kwargs: Any) -> Any:
        lease = self._pgpool_lease
        if lease is not None and lease.ctx() is not _app_context(None):
            _check(lease)
        return base_cursor(self, *args, **kwargs)

    def psycopg2_cursor(
        self: Any, name: Any = None, cursor_factory: Any = None, withhold: Any = False, scrollable: Any = None
    ) -> Any:
        # psycopg2's own cursor(), with its signature and defaults: without
        # *args and **kwargs, which cost more than the check itself.
        lease = self._pgpool_lease
        if lease is not None and lease.ctx() is not _app_context(None):
            _check(lease)
        if name is None and cursor_factory is None and withhold is False and scrollable is None:
            # psycopg2 parses whatever arguments it is given: none at all is
            # about 700 instructions less, and most cursors take the defaults.
            return base_cursor(self)
        return base_cursor(self, name, cursor_factory, withhold, scrollable)

    def commit(self: Any) -> None:
        lease = self._pgpool_lease
        if lease is not None and lease.ctx() is not _app_context(None):
            _check(lease)
        base_commit(self)

    def rollback(self: Any) -> None:
        lease = self._pgpool_lease
        if lease is not None and lease.ctx() is not _app_context(None):
            _check(lease)
        base_rollback(self)

    if base_cursor is connection.cursor:
        # Named as the method it stands for: Python's TypeError for a wrong argument quotes this name.
        psycopg2_cursor.__name__ = "cursor"
        psycopg2_cursor.__qualname__ = f"{base.__qualname__}.cursor"
        cursor: Any = psycopg2_cursor
    else:
        cursor = any_cursor
    return {"cursor": cursor, "commit": commit, "rollback": rollback}


def _check(lease: _Lease) -> None:
    """Raise unless the caller may use a connection of ``lease``; the caller is not in its app context."""
    if STREAMING.get() is lease:
        return
    if lease.ctx is ENDED:
        if _called_by_the_pool():
            return  # its health check of an idle connection, say
        raise StaleConnectionError(
            "this connection was given back to the pool when its request ended; it may already be "
            "another request's. Call get_db() in the request (or app context) that uses it, and keep "
            "no reference to it after the request (in a global, a thread or a cache)"
        )
    current = compat.app_context()
    if current is None:
        return  # a thread of the request, or the generator of its streamed response
    owner = lease.ctx()
    if any(ctx is owner for ctx in compat.enclosing_app_contexts(current)):
        return  # an app context pushed inside the request
    if _called_by_the_pool():
        return  # the rollback of its return, run from whichever context ends the request
    raise StaleConnectionError(
        "this connection belongs to another request (app context): call get_db() in the request "
        "that uses it instead of sharing a connection kept from another one"
    )


def _called_by_the_pool() -> bool:
    """Whether the code that called the guarded method is the pool's own.

    Looked up only when a connection whose lease ended is used, so that the
    pool's work on an idle connection costs nothing on the request path.
    """
    # 0: this function, 1: _check, 2: the guarded method, 3: its caller.
    caller = sys._getframe(3)
    module = str(caller.f_globals.get("__name__", ""))
    return module.startswith("flask_pgpool.") and module not in _GLUE


_factories: dict[type, type] = {}
_factories_lock = threading.Lock()


def guarded_factory(base: Any) -> type | None:
    """The connection class the app's pool opens: ``base`` (a ``connection_factory``) with LeaseGuard.

    None when ``base`` is not a connection class (a plain factory function):
    then nothing is guarded.
    """
    if base is None:
        base = connection
    if not (isinstance(base, type) and issubclass(base, connection)):
        return None
    if issubclass(base, LeaseGuard):
        return base
    with _factories_lock:
        guarded = _factories.get(base)
        if guarded is None:
            # Same name as the user's class, so that what users print stays familiar.
            namespace = {"__module__": __name__, **_guarded_methods(base)}
            guarded = type(base.__name__, (LeaseGuard, base), namespace)
            _factories[base] = guarded
    return guarded


class LeasingPool(ConnectionPool):
    """The pool of an app whose connections are guarded.

    An idle connection keeps the ended lease of the last request that had
    it, so that a reference kept from that request fails; the pool's own work
    on it (health check, rollback on return, :meth:`check`) is let through.
    A checkout by ``getconn()`` frees the connection of that lease.
    """

    def getconn(self, key: Hashable | None = None, timeout: float | None = None) -> connection:
        conn = super().getconn(key, timeout)
        lease = getattr(conn, "_pgpool_lease", None)
        if lease is not None and lease.ctx is ENDED:
            conn._pgpool_lease = None  # type: ignore[attr-defined]
        return conn
