"""The schema: ``flask init-db``, and created automatically by the first request."""

from __future__ import annotations

import threading
from importlib import resources

import click
from flask import Flask, current_app
from flask.cli import with_appcontext

from flask_pgpool import get_db

# Any constant: serializes schema creation between processes (gunicorn workers),
# since concurrent CREATE TABLE IF NOT EXISTS can still collide.
_SCHEMA_LOCK_KEY = 0x5067706F6F6C


def create_schema(reset: bool = False) -> None:
    """Create the tables that are missing (all of them, dropped first, with ``reset``)."""
    sql = resources.files(__package__).joinpath("schema.sql").read_text(encoding="utf-8")
    conn = get_db()
    with conn, conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK_KEY,))
        if reset:
            cur.execute("DROP TABLE IF EXISTS notes")
        cur.execute(sql)


@click.command("init-db")
@click.option("--reset", is_flag=True, help="Drop the existing notes first.")
@with_appcontext
def init_db_command(reset: bool) -> None:
    """Create the database tables (idempotent)."""
    if reset:
        click.confirm("Delete every note?", abort=True)
    create_schema(reset=reset)
    click.echo(f"Initialized the database: {current_app.extensions['pgpool'].get_pool().dsn}")


def init_app(app: Flask) -> None:
    """Register ``flask init-db``, and create the schema before the first request.

    Not in the factory itself: ``flask routes`` or a gunicorn ``--preload``
    master must not need the database.
    """
    app.cli.add_command(init_db_command)
    done = threading.Event()
    lock = threading.Lock()

    @app.before_request
    def ensure_schema() -> None:
        if done.is_set():
            return
        with lock:
            if not done.is_set():
                create_schema()
                done.set()
