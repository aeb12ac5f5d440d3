"""What one request (or app context) has checked out, until it ends.

A :class:`Lease` holds the connections that :func:`~flask_pgpool.get_db`
checked out for one request, one per bind. It ends when the request ends
(or, for a streamed response, when the body has been sent): every connection
goes back to where it came from, and a connection kept past that point
refuses to work (see ``_guard``).
"""

from __future__ import annotations

import logging
import types
import weakref
from collections.abc import Callable
from typing import Any

from flask import Response
from psycopg2.extensions import connection

from ._guard import ENDED
from ._streaming import ReleaseWhenSent

__all__ = ["GiveBack", "Lease"]

_log = logging.getLogger("flask_pgpool")


#: Gives a connection back: to its pool, or to the test's connections under rolled_back().
GiveBack = Callable[[connection], None]


# Open leases, by the weak reference to the object that holds each (see
# Lease.__init__): the reference must live as long as its lease for its
# callback to run, and the callback finds the lease here.
_holders: dict[weakref.ref[Any], Lease] = {}
# Module globals, read without attribute lookups: a lease is made and ended on every request.
_unhold, _ref = _holders.pop, weakref.ref


def _holder_freed(ref: weakref.ref[Any]) -> None:
    """The holder of an open lease was freed: its teardown did not run (see Lease.__init__)."""
    lease = _holders.pop(ref, None)
    if lease is not None and lease.conns and lease.release is None and lease.ctx is not ENDED:
        _log.warning(
            "flask-pgpool: a request's connections were given back only when its app context was freed; "
            "did a teardown function raise? (before Flask 3.2 that stops the other teardown functions)"
        )
        lease.end()


class Lease:
    """The connections one request (or app context) checked out, while it may use them."""

    __slots__ = ("_holder", "conns", "ctx", "release")

    def __init__(self, ctx: Any, holder: Any, bind: str, give_back: GiveBack, conn: connection, guarded: bool) -> None:
        """The lease of the app context ``ctx``, kept by ``holder``, with its first connection (see :meth:`add`).

        ``holder`` is ``ctx`` when the lease lives in its ``g``, or the request
        context of a request that borrows ``ctx``.
        """
        self.conns: dict[str, tuple[GiveBack, connection]] = {bind: (give_back, conn)}
        # ``holder`` keeps this lease until the teardown ends it. On Flask <
        # 3.2 a teardown function that raises stops Flask from running the
        # later ones, flask-pgpool's included: then the connections go back
        # when the holder is freed. The callback is a module-level function
        # (a bound method would be one more object per request), and when the
        # holder is the app context, its weak reference below serves for both.
        #: The app context it belongs to; ENDED once the connections are given back.
        #: Weak: the app context holds the lease, and must be freed without it.
        self.ctx: weakref.ref[Any] = (ref := _ref(ctx, _holder_freed))
        #: Set while a streamed response holds the connections: call it to give them back.
        self.release: Any = None
        self._holder: weakref.ref[Any] | None = (held := ref if holder is ctx else _ref(holder, _holder_freed))
        _holders[held] = self
        if guarded:
            # _mark(conn, self), written out: the first checkout of every request runs it.
            try:
                conn._pgpool_lease = self  # type: ignore[attr-defined]
            except AttributeError:
                return  # see _mark

    @property
    def open(self) -> bool:
        return self.ctx is not ENDED

    @property
    def held(self) -> bool:
        """Whether a streamed response holds the connections until it is sent."""
        return self.release is not None and self.ctx is not ENDED

    def add(self, bind: str, give_back: GiveBack, conn: connection, guarded: bool) -> None:
        """Hold ``conn`` of ``bind``, given back by ``give_back``; ``guarded``: it may carry the check of _guard."""
        self.conns[bind] = (give_back, conn)
        if guarded:
            _mark(conn, self)

    def finish(self, exc: BaseException | None) -> bool:
        """The request's teardown: give the connections back, unless a response that will be sent holds them.

        An exception here means that the response carrying the streamed body
        (if any) will not be sent: a hook or a ``request_finished`` receiver
        failed after the body was wrapped. Returns whether a streamed response
        still holds them. Never raises.
        """
        if self.release is None:
            self.end()
            return False
        if exc is not None:
            self.release()
        return self.held

    def end(self) -> None:
        """Give every connection back; they refuse to work for whoever kept them. Never raises."""
        conns, self.conns = self.conns, {}
        try:
            for bind, (give_back, conn) in conns.items():
                try:
                    give_back(conn)
                except Exception:
                    # A raising teardown would stop Flask < 3.2 from running the others.
                    _log.exception("flask-pgpool: could not return the %r connection", bind)
        finally:
            self.ctx = ENDED
            self.release = None
            held = self._holder
            if held is not None:
                _unhold(held, None)
                self._holder = None

    def hold_if_streamed(self, response: Response) -> Response:
        """An after-this-request hook: keep the connections until a streamed body has been sent.

        Flask 3.1.2+ ends the app context when the view returns, before the
        body is streamed; giving the connections back then would roll back the
        view's work and let another request use them while the stream still does.
        Only a generator body can run view code after the view returned; other
        streamed bodies (error pages, files) need no connection.
        """
        body = response.response
        # Most bodies are not generators: that test first.
        if isinstance(body, types.GeneratorType) and self.conns and self.release is None and self.ctx is not ENDED:
            wrapped = ReleaseWhenSent(body, self)
            self.release = wrapped.release
            response.response = wrapped
        return response


def _mark(conn: connection, lease: Lease) -> None:
    """Tie ``conn`` to ``lease``, for the check of _guard."""
    # A try rather than contextlib.suppress (three calls): this runs at every checkout.
    try:
        conn._pgpool_lease = lease  # type: ignore[attr-defined]
    except AttributeError:
        return  # a connection_factory function's connection has no check, nor room for a lease
