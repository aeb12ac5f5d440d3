"""One pooled connection: what the pool records about it, the session settings
put back when it is returned, and closing it without hanging."""

from __future__ import annotations

import contextlib
import select
import traceback
from dataclasses import dataclass
from typing import Any

from psycopg2.extensions import TRANSACTION_STATUS_INERROR, TRANSACTION_STATUS_INTRANS, connection

from ._health import bounded

__all__ = ["Slot", "close_quietly", "restore_session", "session_of"]


@dataclass(eq=False)
class Slot:
    """What the pool knows of one open connection."""

    conn: connection
    expires: float
    last_used: float
    session: tuple[Any, ...]
    poller: select.poll  # watches the socket for the health check
    checked_out: float = 0.0
    # Failover (see _failover): opened on a server that took writes, and when
    # that was last known to hold (opened, or verified).
    on_primary: bool = False
    verified_at: float = 0.0
    stack: traceback.StackSummary | None = None
    leak_reported: bool = False


def session_of(conn: connection) -> tuple[Any, ...]:
    return (conn.autocommit, conn.isolation_level, conn.readonly, conn.deferrable)


def restore_session(conn: connection, session: tuple[Any, ...]) -> None:
    # These are client-side settings in psycopg2: restoring them costs no round trip.
    autocommit, isolation_level, readonly, deferrable = session
    conn.autocommit = False
    # set_session() leaves a None argument unchanged; "default" resets it.
    conn.set_session(
        isolation_level="default" if isolation_level is None else isolation_level,
        readonly="default" if readonly is None else readonly,
        deferrable="default" if deferrable is None else deferrable,
    )
    conn.autocommit = autocommit


def close_quietly(conn: connection, timeout: float = 5.0) -> None:
    try:
        if not conn.closed and conn.info.transaction_status in (
            TRANSACTION_STATUS_INTRANS,
            TRANSACTION_STATUS_INERROR,
        ):
            # PgBouncer drops a server connection closed mid-transaction;
            # a silent network must not hang the caller, hence the bound.
            with bounded(conn, timeout):
                conn.rollback()
    except Exception:
        pass
    finally:
        # Even if the rollback failed: an unclosed connection keeps its socket.
        with contextlib.suppress(Exception):
            conn.close()
