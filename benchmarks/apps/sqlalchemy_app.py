"""Variant 3: SQLAlchemy's QueuePool with pool_pre_ping (as Flask-SQLAlchemy runs it), raw connections."""

from __future__ import annotations

from typing import Any

import psycopg2
from flask import Flask, g
from sqlalchemy import create_engine

from .common import make_app, settings


def create_app(dsn: str | None = None, maxconn: int | None = None) -> Flask:
    dsn, maxconn = settings(dsn, maxconn)
    # The psycopg2 dialect (so pre_ping is the dialect's real ping) on our DSN.
    engine = create_engine(
        "postgresql+psycopg2://",
        creator=lambda: psycopg2.connect(dsn),
        pool_size=maxconn,
        max_overflow=0,
        pool_pre_ping=True,
    )

    def get_conn() -> Any:
        if "db" not in g:
            g.db = engine.raw_connection()
        return g.db

    app = make_app(__name__, get_conn)

    @app.teardown_appcontext
    def put_conn(exc: BaseException | None) -> None:
        conn = g.pop("db", None)
        if conn is not None:
            conn.close()  # back to the QueuePool (which resets it)

    return app
