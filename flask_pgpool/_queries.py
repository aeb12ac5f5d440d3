"""How the package runs its own SQL: the same way whatever the user's factories are.

Users pass a ``cursor_factory`` (``DictCursor``, ``RealDictCursor``...) that
changes what rows look like, or a ``connection_factory`` (``LoggingConnection``)
whose ``cursor()`` refuses to work until it is set up, or is overridden in
other ways. The package's queries (ping, health check, the CLI's sizing
figures, the test helpers' savepoints) go through here instead: a cursor of
psycopg2's base class, opened through the base connection class, whose rows
are plain tuples.
"""

from __future__ import annotations

from typing import Any

from psycopg2.extensions import connection, cursor

__all__ = ["execute", "fetch_one"]


def _plain_cursor(conn: connection) -> cursor:
    # Through the base class: a subclass's cursor() (LoggingConnection's checks
    # that initialize() ran) is not ours to call, and an explicit factory wins
    # over the connection's cursor_factory.
    return connection.cursor(conn, cursor_factory=cursor)


def execute(conn: connection, sql: str, params: Any = None) -> None:
    """Run a statement of the package's own; its rows, if any, are dropped."""
    with _plain_cursor(conn) as cur:
        cur.execute(sql, params)


def fetch_one(conn: connection, sql: str, params: Any = None) -> tuple[Any, ...] | None:
    """Run a query of the package's own; its first row as a plain tuple, or None."""
    with _plain_cursor(conn) as cur:
        cur.execute(sql, params)
        row = cur.fetchone()
    return None if row is None else tuple(row)
