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


# Open leases, by the id of the weak reference to the object that holds each
# (see Lease.__init__); the lease keeps that reference alive, so that its
# callback runs, and the callback finds the lease here. By id, not by the
# reference itself: references to the same live object compare equal (two
# leases of one app context would share an entry), and a dead one that was
# never hashed cannot be.
_holders: dict[int, Lease] = {}
# Module globals, read without attribute lookups: a lease is made and ended on every request.
_unhold, _ref = _holders.pop, weakref.ref


def _holder_freed(ref: weakref.ref[Any]) -> None:
    """The holder of an open lease was freed: its teardown did not run (see Lease.__init__)."""
    lease = _holders.pop(id(ref), None)
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
        if holder is ctx:
            self.ctx: weakref.ref[Any] = (held := _ref(ctx, _holder_freed))
        else:
            self.ctx, held = _ref(ctx), _ref(holder, _holder_freed)
        #: Set while a streamed response holds the connections: call it to give them back.
        self.release: Any = None
        self._holder: weakref.ref[Any] | None = held
        _holders[id(held)] = self
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

    def add(self, bind: str, give_back: GiveBack, conn: connection, guarded: bool) -> connection:
        """Hold ``conn`` of ``bind``, given back by ``give_back``; ``guarded``: it may carry the check of _guard.

        Returns the connection of ``bind`` the lease now holds: another
        thread of the same app context (``contextvars.copy_context()``) may
        have added one first; then ``conn`` is given back.
        """
        held = self.conns.setdefault(bind, (give_back, conn))
        if held[1] is not conn:
            _give_back_quietly(bind, give_back, conn)
            return held[1]
        if guarded:
            _mark(conn, self)
        return conn

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
                # _give_back_quietly() written out: every request's teardown runs this loop.
                try:
                    give_back(conn)
                except Exception:
                    _log.exception("flask-pgpool: could not return the %r connection", bind)
        finally:
            self.ctx = ENDED
            self.release = None
            held = self._holder
            if held is not None:
                _unhold(id(held), None)
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


def _give_back_quietly(bind: str, give_back: GiveBack, conn: connection) -> None:
    try:
        give_back(conn)
    except Exception:
        # A raising teardown would stop Flask < 3.2 from running the others.
        _log.exception("flask-pgpool: could not return the %r connection", bind)


def _mark(conn: connection, lease: Lease) -> None:
    """Tie ``conn`` to ``lease``, for the check of _guard."""
    # A try rather than contextlib.suppress (three calls): this runs at every checkout.
    try:
        conn._pgpool_lease = lease  # type: ignore[attr-defined]
    except AttributeError:
        return  # a connection_factory function's connection has no check, nor room for a lease
