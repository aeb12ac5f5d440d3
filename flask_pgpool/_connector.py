"""Opening connections: the connection parameters, the set-up of a new
connection, and the backoff while the server cannot be reached.

Nothing here takes the pool's lock: :class:`Connector` runs in the background
threads that open connections, and :class:`Backoff` is only touched by the
pool under its lock.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from psycopg2.extensions import TRANSACTION_STATUS_IDLE, connection

from . import _dsn as dsnlib
from . import _green, _timeouts
from ._credentials import ArgsSource, ConnectParams, DsnSource
from ._session import close_quietly

__all__ = ["Backoff", "Connector"]

# Reconnection backoff while the server is unreachable: doubling from the
# first delay up to the last, with jitter so that workers do not knock in step.
BACKOFF_FIRST = 0.1
# Kept short, so that once the server is back a waiting checkout sees a new
# attempt within about a second (checkouts fail fast while it is down).
BACKOFF_MAX = 1.0


class Connector:
    """Knows how to open and set up one connection of a pool."""

    def __init__(
        self,
        dsn: DsnSource,
        *,
        connect_args: ArgsSource,
        connect_timeout: int,
        read_only: bool,
        configure: Callable[[connection], None] | None,
        network_timeout: float | None = None,
        statement_timeout: float | None = None,
        label: Callable[[str], str] = str,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.network_timeout = network_timeout
        self.statement_timeout = statement_timeout
        self._label = label
        self.read_only = read_only
        self.configure = configure
        # A callable DSN or connect_args is called for every new connection.
        self._params = ConnectParams(dsn, connect_args, self._complete)

    def after_fork(self) -> None:
        self._params.after_fork()

    @property
    def resolved_dsn(self) -> str | None:
        """The DSN if it is known yet (the last one a callable returned)."""
        return self._params.last_dsn

    @property
    def secrets(self) -> tuple[str, ...]:
        return self._params.secrets

    def params(self) -> tuple[str, dict[str, Any]]:
        """The DSN and the keyword arguments of psycopg2.connect() (a callable is called each time)."""
        return self._params.resolve()

    def _complete(self, dsn: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        """``kwargs`` with the pool's bounds added where neither the DSN nor connect_args set them."""
        # A server that does not answer must fail the connect, not hang it.
        if self.connect_timeout and "connect_timeout" not in kwargs and "connect_timeout" not in dsnlib.parse(dsn):
            kwargs["connect_timeout"] = self.connect_timeout
        kwargs.update(
            _timeouts.connect_params(
                dsn, kwargs, network_timeout=self.network_timeout, statement_timeout=self.statement_timeout
            )
        )
        return kwargs

    def connect(self) -> connection:
        """Open and set up one connection (blocking: never under the pool's lock)."""
        dsn, kwargs = self.params()
        _green.bound_connects()  # a wait callback makes libpq's connect_timeout void
        conn = _timeouts.connect(dsn, kwargs, self.statement_timeout, self._label("statement_timeout"))
        try:
            if self.read_only:
                conn.set_session(readonly=True)
            if self.configure is not None:
                self.configure(conn)
                if conn.info.transaction_status != TRANSACTION_STATUS_IDLE:
                    conn.rollback()
        except BaseException:
            close_quietly(conn, self.close_timeout)
            raise
        return conn

    @property
    def close_timeout(self) -> float:
        return float(min(b for b in (self.connect_timeout or 5, self.network_timeout) if b))

    def redact(self, text: str) -> str:
        return dsnlib.redact(text, self.secrets)


class Backoff:
    """Spacing of connection attempts while they fail (under the pool's lock).

    After a failure the next attempt waits ``delay`` (doubling up to
    :data:`BACKOFF_MAX`, jittered); one success resets it.
    """

    __slots__ = ("delay", "failed_started", "failures", "last_error", "next_at")

    def __init__(self) -> None:
        self.failures = 0  # attempts failed so far, ever
        self.delay = 0.0
        self.next_at = 0.0
        self.last_error: str | None = None
        # When the latest-begun failed attempt began: only an attempt begun
        # after a checkout started waiting proves the database down to it.
        self.failed_started = float("-inf")

    @property
    def active(self) -> bool:
        """The last attempt failed."""
        return self.delay > 0.0

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def failed(self, now: float, error: str, started: float) -> bool:
        """Record a failed attempt begun at ``started``; return whether it is the first of a series."""
        first = not self.active
        self.failures += 1
        self.failed_started = max(self.failed_started, started)
        self.delay = min(BACKOFF_MAX, self.delay * 2 or BACKOFF_FIRST)
        self.next_at = now + self.delay * random.uniform(0.5, 1.0)
        self.last_error = error
        return first

    def failed_since(self, since: float) -> bool:
        """Whether the last attempt failed, and an attempt begun at or after ``since`` failed."""
        return self.active and self.failed_started >= since

    def succeeded(self) -> str | None:
        """Record a successful attempt; return the error it recovered from, if any."""
        recovered = self.last_error if self.active else None
        self.failed_started = float("-inf")  # a failure before this success proves nothing now
        self.delay = 0.0
        self.next_at = 0.0
        self.last_error = None
        return recovered
