"""Variant 4: psycopg_pool's ConnectionPool (psycopg 3), getconn onto g, putconn at teardown."""

from __future__ import annotations

from flask import Flask
from psycopg_pool import ConnectionPool

from .common import make_g_app, settings


def create_app(dsn: str | None = None, maxconn: int | None = None) -> Flask:
    dsn, maxconn = settings(dsn, maxconn)
    # Same sizes as the other pools (minconn 1, maxconn); the rest are its defaults.
    pool = ConnectionPool(dsn, min_size=1, max_size=maxconn, open=True)

    return make_g_app(__name__, pool.getconn, pool.putconn)
