"""Variant 6, the limit: one connection per worker thread, opened once and never returned.

No pool bookkeeping at all, so nothing can be faster; a connection the server
closed is replaced on the next request of that thread (the request that found
it dead fails).
"""

from __future__ import annotations

import threading
from typing import Any

import psycopg2
from flask import Flask

from .common import make_app, settings


def create_app(dsn: str | None = None, maxconn: int | None = None) -> Flask:
    dsn, _ = settings(dsn, maxconn)
    local = threading.local()

    def get_conn() -> Any:
        conn = getattr(local, "conn", None)
        if conn is None or conn.closed:
            conn = local.conn = psycopg2.connect(dsn)
        return conn

    return make_app(__name__, get_conn)
