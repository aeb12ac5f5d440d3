"""The notes table, through parametrized SQL only. Shared by the pages and the API."""

from __future__ import annotations

from typing import Any

from psycopg2.extras import RealDictCursor

from flask_pgpool import get_db

TITLE_MAX = 200
_COLUMNS = "id, title, body, created_at, updated_at"


class Invalid(ValueError):
    """The input cannot be stored; the message says why, for the user."""


def check(title: Any, body: Any) -> tuple[str, str]:
    """The cleaned title and body, or :class:`Invalid`."""
    if not isinstance(title, str) or not title.strip():
        raise Invalid("A title is required.")
    if body is None:
        body = ""
    if not isinstance(body, str):
        raise Invalid("The body must be text.")
    title = title.strip()
    if len(title) > TITLE_MAX:
        raise Invalid(f"The title must be at most {TITLE_MAX} characters.")
    return title, body


def list_notes() -> list[dict[str, Any]]:
    with get_db().cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute(f"SELECT {_COLUMNS} FROM notes ORDER BY updated_at DESC, id DESC")
        return list(cur.fetchall())


def get_note(note_id: int) -> dict[str, Any] | None:
    with get_db().cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute(f"SELECT {_COLUMNS} FROM notes WHERE id = %s", (note_id,))
        row = cur.fetchone()
    return dict(row) if row is not None else None


def create_note(title: str, body: str) -> dict[str, Any]:
    conn = get_db()
    with conn, conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute(f"INSERT INTO notes (title, body) VALUES (%s, %s) RETURNING {_COLUMNS}", (title, body))
        return dict(cur.fetchone() or {})


def update_note(note_id: int, title: str, body: str) -> dict[str, Any] | None:
    conn = get_db()
    with conn, conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute(
            f"UPDATE notes SET title = %s, body = %s, updated_at = now() WHERE id = %s RETURNING {_COLUMNS}",
            (title, body, note_id),
        )
        row = cur.fetchone()
    return dict(row) if row is not None else None


def delete_note(note_id: int) -> bool:
    conn = get_db()
    with conn, conn.cursor() as cur:
        cur.execute("DELETE FROM notes WHERE id = %s", (note_id,))
        return cur.rowcount == 1
