"""Variant 2: the recipe users copy: ThreadedConnectionPool, getconn onto g, putconn at teardown."""

from __future__ import annotations

from typing import Any

from flask import Flask, g
from psycopg2.pool import ThreadedConnectionPool

from .common import make_app, settings


def create_app(dsn: str | None = None, maxconn: int | None = None) -> Flask:
    dsn, maxconn = settings(dsn, maxconn)
    pool = ThreadedConnectionPool(1, maxconn, dsn)

    def get_conn() -> Any:
        if "db" not in g:
            g.db = pool.getconn()
        return g.db

    app = make_app(__name__, get_conn)

    @app.teardown_appcontext
    def put_conn(exc: BaseException | None) -> None:
        conn = g.pop("db", None)
        if conn is not None:
            pool.putconn(conn)

    return app
