"""The errors the pool raises.

All are :class:`psycopg2.pool.PoolError` subclasses, so code written for
psycopg2's own pools keeps catching them.
"""

from __future__ import annotations

from collections.abc import Iterable

from psycopg2.pool import PoolError

__all__ = ["DatabaseUnavailable", "PgPoolError", "PoolClosed", "PoolTimeout", "TooManyRequests"]


class PgPoolError(PoolError):
    """Base class of the errors that mean "the pool cannot serve you now".

    Inside a Flask request they become an HTTP 503 response. ``pool`` is the
    name of the pool that raised it; ``settings`` names the pool options to
    look at (``"maxconn"``, ``"timeout"``...), most relevant first.
    """

    def __init__(self, message: str, *, pool: str = "", settings: Iterable[str] = ()) -> None:
        """``message`` for the caller; ``pool`` and ``settings`` as described above."""
        super().__init__(message)
        self.pool = pool
        self.settings: tuple[str, ...] = tuple(settings)


class PoolTimeout(PgPoolError):
    """No connection could be handed out within the pool's timeout."""


class DatabaseUnavailable(PoolTimeout):
    """The database cannot be reached: the last attempt to connect failed and
    no connection is open. Raised after a short wait rather than the whole
    timeout; the message gives the server's or the network's error."""


class TooManyRequests(PgPoolError):
    """The queue of waiting requests is full (``max_waiting``)."""


class PoolClosed(PgPoolError):
    """The pool has been closed and hands out no more connections."""
