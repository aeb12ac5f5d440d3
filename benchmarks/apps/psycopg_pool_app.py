"""Variant 4: psycopg_pool's ConnectionPool (psycopg 3), getconn onto g, putconn at teardown."""

from __future__ import annotations

from typing import Any

from flask import Flask, g
from psycopg_pool import ConnectionPool

from .common import make_app, settings


def create_app(dsn: str | None = None, maxconn: int | None = None) -> Flask:
    dsn, maxconn = settings(dsn, maxconn)
    # Same sizes as the other pools (minconn 1, maxconn); the rest are its defaults.
    pool = ConnectionPool(dsn, min_size=1, max_size=maxconn, open=True)

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

    app.extensions["bench_pool"] = pool
    return app
