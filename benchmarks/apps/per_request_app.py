"""Variant 5: a new connection for every request, closed at teardown (no pool)."""

from __future__ import annotations

from typing import Any

import psycopg2
from flask import Flask, g

from .common import make_app, settings


def create_app(dsn: str | None = None, maxconn: int | None = None) -> Flask:
    dsn, _ = settings(dsn, maxconn)

    def get_conn() -> Any:
        if "db" not in g:
            g.db = psycopg2.connect(dsn)
        return g.db

    app = make_app(__name__, get_conn)

    @app.teardown_appcontext
    def close_conn(exc: BaseException | None) -> None:
        conn = g.pop("db", None)
        if conn is not None:
            conn.close()

    return app
