"""Variant 3: SQLAlchemy's QueuePool with pool_pre_ping (as Flask-SQLAlchemy runs it), raw connections."""

from __future__ import annotations

import psycopg2
from flask import Flask
from sqlalchemy import Engine, create_engine

from .common import make_g_app, settings


def make_engine(dsn: str, size: int, pre_ping: bool = True) -> Engine:
    """A QueuePool of ``size`` (no overflow) on the psycopg2 dialect, so pre_ping is the dialect's real ping."""
    return create_engine(
        "postgresql+psycopg2://",
        creator=lambda: psycopg2.connect(dsn),
        pool_size=size,
        max_overflow=0,
        pool_pre_ping=pre_ping,
    )


def create_app(dsn: str | None = None, maxconn: int | None = None) -> Flask:
    dsn, maxconn = settings(dsn, maxconn)
    engine = make_engine(dsn, maxconn)
    # Closing a raw connection gives it back to the QueuePool, which resets it.
    return make_g_app(__name__, engine.raw_connection, lambda conn: conn.close())
