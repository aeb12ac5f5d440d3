"""The errors the pool raises.

All are :class:`psycopg2.pool.PoolError` subclasses, so code written for
psycopg2's own pools keeps catching them.
"""

from __future__ import annotations

from psycopg2.pool import PoolError

__all__ = ["PgPoolError", "PoolClosed", "PoolTimeout", "TooManyRequests"]


class PgPoolError(PoolError):
    """Base class of the errors that mean "the pool cannot serve you now".

    Inside a Flask request they become an HTTP 503 response.
    """


class PoolTimeout(PgPoolError):
    """No connection could be handed out within the pool's timeout."""


class TooManyRequests(PgPoolError):
    """The queue of waiting requests is full (``max_waiting``)."""


class PoolClosed(PgPoolError):
    """The pool has been closed and hands out no more connections."""
