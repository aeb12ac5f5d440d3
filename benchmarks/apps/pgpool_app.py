"""Variant 1: flask-pgpool with its defaults (health checks on)."""

from __future__ import annotations

from flask import Flask

from flask_pgpool import PgPool, get_db

from .common import make_app, settings


def create_app(dsn: str | None = None, maxconn: int | None = None) -> Flask:
    dsn, maxconn = settings(dsn, maxconn)
    app = make_app(__name__, get_db)
    app.config.update(PGPOOL_DSN=dsn, PGPOOL_MAXCONN=maxconn)
    PgPool(app)
    return app
