"""A connection's session between two checkouts: what is put back when it is
returned, the optional full reset, and closing it without hanging.

Everything here runs outside the pool's lock, bounded in time by a watchdog
(a silent network must not hang the thread that returns a connection).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import psycopg2
from psycopg2.extensions import (
    STATUS_READY,
    TRANSACTION_STATUS_ACTIVE,
    TRANSACTION_STATUS_IDLE,
    TRANSACTION_STATUS_INERROR,
    TRANSACTION_STATUS_INTRANS,
    connection,
)

from ._health import bounded
from ._queries import execute

__all__ = ["Reset", "close_quietly", "reset_for_reuse", "restore_session", "session_of"]

#: A reset run when a connection is returned: SQL (e.g. ``"DISCARD ALL"``),
#: or a function given the connection, run in autocommit.
Reset = str | Callable[[connection], None]

_OPEN = (TRANSACTION_STATUS_INTRANS, TRANSACTION_STATUS_INERROR)


def session_of(conn: connection) -> tuple[Any, ...]:
    """The connection's client-side session settings (no round trip)."""
    return (conn.autocommit, conn.isolation_level, conn.readonly, conn.deferrable)


def restore_session(conn: connection, session: tuple[Any, ...]) -> None:
    # Client-side settings in psycopg2: restoring them costs no round trip
    # (except in autocommit, where psycopg2 sends them as SET).
    autocommit, isolation_level, readonly, deferrable = session
    conn.autocommit = False
    # set_session() leaves a None argument unchanged; "default" resets it.
    conn.set_session(
        isolation_level="default" if isolation_level is None else isolation_level,
        readonly="default" if readonly is None else readonly,
        deferrable="default" if deferrable is None else deferrable,
    )
    conn.autocommit = autocommit


def execute_plain(conn: connection, sql: str) -> None:
    """Run ``sql`` in autocommit with psycopg2's own cursor, whatever the user's
    connection or cursor factory (a LoggingConnection refuses ``cursor()``
    before its ``initialize()``)."""
    autocommit = conn.autocommit
    conn.autocommit = True
    try:
        execute(conn, sql)
    finally:
        conn.autocommit = autocommit


def reset_for_reuse(
    conn: connection,
    session: tuple[Any, ...],
    timeout: float,
    reset: Reset | None = None,
    configure: Callable[[connection], None] | None = None,
) -> None:
    """Make a returned connection ready for the next checkout; raise if it cannot be.

    An open transaction is rolled back, also one the driver does not know of
    (``BEGIN`` sent in autocommit, where ``rollback()`` sends nothing): the
    server's transaction status decides. Then ``reset`` runs (and ``configure``
    again after it, since a reset undoes its work), and the client-side
    session settings are put back as they were when the connection was opened.
    """
    status = conn.get_transaction_status() if not conn.closed else None
    # The driver's view counts too: after a COMMIT or ROLLBACK sent as SQL the
    # server is idle but psycopg2 still thinks a transaction is open, and would
    # send no BEGIN for the next borrower (whose work would then autocommit).
    # A two-phase transaction left prepared or failed refuses rollback(): the
    # connection is then discarded.
    driver_open = not conn.closed and conn.status != STATUS_READY
    if status in _OPEN or driver_open or reset is not None:
        with bounded(conn, timeout) as watchdog:
            if status in _OPEN or driver_open:
                conn.rollback()
                if conn.get_transaction_status() in _OPEN:
                    execute_plain(conn, "ROLLBACK")
            if reset is not None:
                _run_reset(conn, reset, configure)
        if watchdog.fired:
            raise psycopg2.OperationalError("the rollback or reset did not finish in time")
        status = conn.get_transaction_status()
    if status != TRANSACTION_STATUS_IDLE or conn.status != STATUS_READY:
        raise psycopg2.InterfaceError("connection closed, lost, or still running a query")
    if reset is not None or session_of(conn) != session:
        restore_session(conn, session)


def _run_reset(conn: connection, reset: Reset, configure: Callable[[connection], None] | None) -> None:
    if isinstance(reset, str):
        execute_plain(conn, reset)
    else:
        # In autocommit like the SQL form, so that DISCARD ALL works in either.
        autocommit = conn.autocommit
        conn.autocommit = True
        try:
            reset(conn)
        finally:
            conn.autocommit = autocommit
    if conn.info.transaction_status in _OPEN:
        conn.rollback()
    if configure is not None:
        configure(conn)
        if conn.info.transaction_status in _OPEN:
            conn.rollback()


def close_quietly(conn: connection, timeout: float = 5.0) -> None:
    """Close a connection, rolling back first; never raises, never hangs.

    A query still running on it is cancelled first: closing the socket alone
    does not stop the server, which would run it to its end.
    """
    try:
        if not conn.closed and conn.info.transaction_status == TRANSACTION_STATUS_ACTIVE:
            conn.cancel()
        if not conn.closed and conn.info.transaction_status in _OPEN:
            # PgBouncer drops a server connection closed mid-transaction;
            # a silent network must not hang the caller, hence the bound.
            with bounded(conn, timeout):
                conn.rollback()
                if conn.info.transaction_status in _OPEN:
                    execute_plain(conn, "ROLLBACK")  # BEGIN sent in autocommit
    except Exception:
        pass
    finally:
        # Even if the rollback failed: an unclosed connection keeps its socket.
        with contextlib.suppress(Exception):
            conn.close()
