"""The two views every variant serves, so only connection handling differs."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from flask import Flask, g

#: One short query; every variant runs it in a transaction it then rolls back.
QUERY = "SELECT 1"


def settings(dsn: str | None, maxconn: int | None) -> tuple[str, int]:
    """The DSN and pool size, from the arguments or from gunicorn's environment."""
    dsn = dsn if dsn is not None else os.environ["BENCH_DSN"]
    maxconn = maxconn if maxconn is not None else int(os.environ.get("BENCH_MAXCONN", "4"))
    return dsn, maxconn


def make_app(name: str, get_conn: Callable[[], Any]) -> Flask:
    """A Flask app with ``/db`` (begin, one SELECT, rollback) and ``/nodb``.

    ``get_conn`` is the variant's way to get the request's connection; the
    variant registers its own teardown to give it back.
    """
    app = Flask(name)

    @app.get("/db")
    def db() -> str:
        conn = get_conn()
        # The driver opens the transaction (BEGIN) before the SELECT; the
        # explicit rollback ends it, so every pool gets back an idle connection.
        with conn.cursor() as cur:
            cur.execute(QUERY)
            row = cur.fetchone()
        conn.rollback()
        return str(row[0])

    @app.get("/nodb")
    def nodb() -> str:
        return "1"

    return app


def make_g_app(name: str, checkout: Callable[[], Any], give_back: Callable[[Any], None]) -> Flask:
    """The glue users copy around a pool: ``checkout()`` onto ``g`` on first
    use in a request, ``give_back(conn)`` in a teardown function."""

    def get_conn() -> Any:
        if "db" not in g:
            g.db = checkout()
        return g.db

    app = make_app(name, get_conn)

    @app.teardown_appcontext
    def put_conn(exc: BaseException | None) -> None:
        conn = g.pop("db", None)
        if conn is not None:
            give_back(conn)

    return app
