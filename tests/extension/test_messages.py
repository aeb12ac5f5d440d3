"""Messages of the pool, seen through the extension, name the PGPOOL_ keys to change."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable

import pytest
from flask import Flask
from support.poolkit import wait_until

from flask_pgpool import DatabaseUnavailable, PoolTimeout, TooManyRequests, get_db


def test_a_timeout_names_the_keys_to_raise(make_app: Callable[..., Flask]) -> None:
    app = make_app(PGPOOL_MAXCONN=1, PGPOOL_TIMEOUT=0.3)
    with app.app_context():
        get_db()
        pool = app.extensions["pgpool"].get_pool()
        with pytest.raises(PoolTimeout) as info:
            pool.getconn()
    message = str(info.value)
    assert "PGPOOL_MAXCONN" in message and "PGPOOL_TIMEOUT" in message
    assert info.value.settings == ("maxconn", "timeout")


def test_a_full_queue_names_max_waiting(make_app: Callable[..., Flask]) -> None:
    app = make_app(PGPOOL_MAXCONN=1, PGPOOL_MAX_WAITING=1, PGPOOL_TIMEOUT=5)
    pool = app.extensions["pgpool"].get_pool(app=app)
    held = pool.getconn()
    waiter = threading.Thread(target=lambda: pool.putconn(pool.getconn()), daemon=True)
    waiter.start()
    wait_until(lambda: pool.get_stats()["requests_waiting"] == 1, timeout=5, what="a waiter")
    with pytest.raises(TooManyRequests, match="PGPOOL_MAX_WAITING"):
        pool.getconn()
    pool.putconn(held)
    waiter.join(5)


def test_a_bind_names_its_own_keys(make_app: Callable[..., Flask], pg_dsn: str) -> None:
    app = make_app(PGPOOL_BINDS={"reports": {"dsn": pg_dsn, "maxconn": 1, "timeout": 0.3}})
    pool = app.extensions["pgpool"].get_pool("reports", app=app)
    held = pool.getconn()
    with pytest.raises(PoolTimeout) as info:
        pool.getconn()
    assert "PGPOOL_BINDS['reports']['maxconn']" in str(info.value)
    pool.putconn(held)


def test_a_leak_warning_names_the_key(make_app: Callable[..., Flask], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="flask_pgpool")
    app = make_app(PGPOOL_LEAK_TIMEOUT=0.2)
    pool = app.extensions["pgpool"].get_pool(app=app)
    conn = pool.getconn()
    wait_until(lambda: "PGPOOL_LEAK_TIMEOUT" in caplog.text, timeout=10, what="the leak warning")
    pool.putconn(conn)


def test_a_refused_connect_reads_as_sentences(make_app: Callable[..., Flask]) -> None:
    """libpq's message ends in a question; the advice after it starts a new sentence."""
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app = make_app(PGPOOL_DSN=f"host=127.0.0.1 port={port} dbname=nothing", PGPOOL_TIMEOUT=2)
    with app.app_context(), pytest.raises(DatabaseUnavailable) as info:
        get_db()
    message = str(info.value)
    assert "?." not in message and ".." not in message, message
    assert " Check that the server is up and that the connection string (PGPOOL_DSN) is right" in message
