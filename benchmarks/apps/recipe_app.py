"""Variant 2: the recipe users copy: ThreadedConnectionPool, getconn onto g, putconn at teardown."""

from __future__ import annotations

from flask import Flask
from psycopg2.pool import ThreadedConnectionPool

from .common import make_g_app, settings


def create_app(dsn: str | None = None, maxconn: int | None = None) -> Flask:
    dsn, maxconn = settings(dsn, maxconn)
    pool = ThreadedConnectionPool(1, maxconn, dsn)

    return make_g_app(__name__, pool.getconn, pool.putconn)
