"""Failover: which connections of a read-write pool still point at a server that takes writes.

A failover or switchover leaves the old primary either stopped (its sessions
die; the socket check at checkout finds them) or up and fenced read-only
(``default_transaction_read_only = on`` and a reload), its sessions kept. A
fenced session shows nothing while it is idle: PostgreSQL applies a reload in
a session only when the next command arrives, and that command already runs
read-only. PostgreSQL 14+ then reports ``default_transaction_read_only = on``
with the result, and libpq keeps it where the client reads it for free.

So a connection of a read-write pool is watched when it is returned: one
client-side read. When a connection opened on a writable server comes back
read-only, every connection of the pool not verified since that moment is
suspect: before its next checkout it is pinged, which makes its session apply
the reload and report it, and it is discarded if its server refuses writes.
Connections opened afterwards are not pinged for it. A connection pinged
anyway (idle for ``ping_after``) is looked at the same way, so a server fenced
while the pool was idle is found before a request meets it. The request that
met the read-only server keeps its error: nothing is retried. Servers older
than 14 report neither parameter; there nothing of this applies.
"""

from __future__ import annotations

import logging
import threading
import time

from psycopg2.extensions import connection

from ._health import bounded
from ._record import ConnectionRecord
from ._session import execute_plain

__all__ = ["READ_ONLY", "FailoverGuard"]

_log = logging.getLogger("flask_pgpool")

#: The setting the server reports on every session (PostgreSQL 14+): "on" once
#: it refuses writes. Idle says nothing of how a request went (a refused write
#: comes back idle in autocommit, after ``with conn:`` and after the view's own
#: rollback), so the pool reads it on every return of a ``record.on_primary``
#: connection: a client-side read, no round trip.
READ_ONLY = "default_transaction_read_only"
_READ_ONLY = READ_ONLY
_HOT_STANDBY = "in_hot_standby"


class FailoverGuard:
    """One pool's view of where its server is. Thread-safe; never takes the pool's lock.

    ``enabled`` is False for a read-only pool, which may well point at a standby.
    ``timeout`` bounds the round trip :meth:`returned` may make.
    """

    def __init__(self, pool_name: str, enabled: bool, timeout: float) -> None:
        self.enabled = enabled
        self._timeout = timeout  # bounds the round trip on return
        #: Connections last verified before this moment (monotonic) are checked before their next use.
        self.suspect_before = float("-inf")
        self._name = pool_name
        self._lock = threading.Lock()
        self._detected_at: float | None = None  # the failover being handled, if any
        self._discarded = 0

    def after_fork(self) -> None:
        """In a child process: another thread of the parent may have held the lock."""
        self._lock = threading.Lock()

    # -- hooks of the pool ---------------------------------------------------

    def opened(self, conn: connection, record: ConnectionRecord, started: float) -> None:
        """A connection was opened (connect begun at ``started``): note whether its server takes writes."""
        record.verified_at = started
        record.on_primary = self.enabled and not _reports_read_only(conn)
        if record.on_primary and self._detected_at is not None:
            self._recovered(conn)

    def pinged(self, conn: connection, record: ConnectionRecord) -> bool:
        """After a ping at checkout: False if the server now refuses writes (one client-side read).

        The ping's round trip made the session apply any pending reload and
        report the result, so a suspect connection costs the pool one ping,
        and a connection due a ping anyway finds a server fenced while the pool
        was idle before a request meets it.
        """
        if not record.on_primary:
            return True
        if _reports_read_only(conn):
            self._count_discarded()
            self._failover(record, "the server refuses writes (default_transaction_read_only = on)")
            return False
        record.verified_at = time.monotonic()
        return True

    def returned(self, conn: connection, record: ConnectionRecord) -> bool:
        """On return, outside the pool's lock: False if the connection's server went read-only.

        It costs one client-side read; a round trip only when the server
        reports read-only.
        """
        if not record.on_primary:
            return True
        if conn.get_parameter_status(_READ_ONLY) != "on":
            return True
        # Set in this session (SET ... or psycopg2's readonly in autocommit), or
        # fenced on the server? RESET answers with the server's value.
        value = _reset_read_only(conn, self._timeout)
        if value == "on":
            self._count_discarded()
            self._failover(record, "the server became read-only (default_transaction_read_only = on)")
        return value == "off"

    # -- internals -------------------------------------------------------------

    def _failover(self, record: ConnectionRecord, what: str) -> None:
        now = time.monotonic()
        with self._lock:
            # The first connection found on the wrong server since the last
            # event tells; the others opened before it are already suspect.
            first = record.verified_at >= self.suspect_before
            self.suspect_before = max(self.suspect_before, now)
            if first:
                self._detected_at = now
                self._discarded = 0
        if first:
            _log.warning(
                "pool %r: %s, as in a failover or switchover: connections opened before now are verified "
                "before their next use and discarded if their server refuses writes",
                self._name,
                what,
            )

    def _count_discarded(self) -> None:
        with self._lock:
            self._discarded += 1

    def _recovered(self, conn: connection) -> None:
        with self._lock:
            detected, self._detected_at = self._detected_at, None
            discarded = self._discarded
        if detected is not None:
            where = f"{conn.info.host}:{conn.info.port}"
            _log.info(
                "pool %r: connected to a writable server (%s) %.1f s after the failover was detected; "
                "%d connection(s) to the read-only server discarded",
                self._name,
                where,
                time.monotonic() - detected,
                discarded,
            )


def _reports_read_only(conn: connection) -> bool:
    """Client-side: does the server say this session is read-only (hot standby or fenced)?"""
    return conn.get_parameter_status(_HOT_STANDBY) == "on" or conn.get_parameter_status(_READ_ONLY) == "on"


def _reset_read_only(conn: connection, timeout: float) -> str | None:
    """RESET the session's read-only default; return the server's value (None if no answer)."""
    with bounded(conn, timeout) as watchdog:
        try:
            execute_plain(conn, f"RESET {_READ_ONLY}")
        except Exception:
            return None
    if watchdog.fired or conn.closed:
        return None
    return str(conn.get_parameter_status(_READ_ONLY))
