"""An app that is dropped (or closed, then dropped) frees everything it had:
the app object, its pools' background threads and its server sessions.

App factories in tests make one app per test; a ``PGPOOL_CONFIGURE`` callback
defined in the factory refers to the app, so a pool that outlived its app
would keep the app, its threads and its sessions for the life of the process.
"""

from __future__ import annotations

import gc
import threading
import weakref
from pathlib import Path

import pytest
from flask import Flask
from psycopg2.extensions import connection
from support.poolkit import query_one, wait_until

from flask_pgpool import PgPool, get_db

SHARED = PgPool()


def create_app(dsn: str, app_name: str, instance: Path, ext: PgPool | None) -> Flask:
    """A factory in the usual shape, whose configure callback refers to the app."""
    app = Flask(__name__, instance_path=str(instance))
    app.config.update(
        PGPOOL_DSN=dsn,
        PGPOOL_MINCONN=2,
        # Short, so that the background thread's next round comes soon.
        PGPOOL_MAX_IDLE=2,
        PGPOOL_CONNECT_ARGS={"application_name": app_name},
        PGPOOL_CONFIGURE=lambda conn: app.logger.debug("new connection %s", conn.info.backend_pid),
    )
    if ext is None:
        PgPool(app)
    else:
        ext.init_app(app)

    @app.get("/one")
    def one() -> str:
        return str(query_one(get_db(), "SELECT 1"))

    return app


def sessions(admin: connection, app_name: str) -> int:
    return int(query_one(admin, "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (app_name,)))


def serve_then_drop(
    pg_dsn: str, app_name: str, tmp_path: Path, ext: PgPool | None, close: bool
) -> tuple[weakref.ref[Flask], set[threading.Thread]]:
    """Make an app, serve requests (the pool opens connections and starts its
    threads), maybe close it; return a weak reference to it and its threads."""
    before = set(threading.enumerate())
    app = create_app(pg_dsn, app_name, tmp_path, ext)
    client = app.test_client()
    for _ in range(3):
        assert client.get("/one").text == "1"
    pool = app.extensions["pgpool"].get_pool(app=app)
    wait_until(lambda: pool.get_stats()["pool_available"] == 2, timeout=10, what="minconn connections")
    # The pool's own threads (housekeeping, connecting), not the process-wide watchdog.
    threads = {t for t in set(threading.enumerate()) - before if t.name.startswith(f"flask-pgpool-{pool.name}")}
    assert threads, "the pool started no background thread"
    if close:
        (ext or app.extensions["pgpool"]).close(app)
    return weakref.ref(app), threads


@pytest.mark.no_pgbouncer  # counts the app's server sessions
@pytest.mark.parametrize("close", [False, True], ids=["dropped", "closed"])
@pytest.mark.parametrize("shared", [False, True], ids=["own-pgpool", "shared-pgpool"])
def test_a_dropped_app_frees_its_pools(
    pg_dsn: str, app_name: str, admin: connection, tmp_path: Path, close: bool, shared: bool
) -> None:
    ref, threads = serve_then_drop(pg_dsn, app_name, tmp_path, SHARED if shared else None, close)
    if not close:
        wait_until(lambda: sessions(admin, app_name) == 2, timeout=10, what="the app's two server sessions")
    # A thread may hold the pool for a moment (a connection being opened).
    wait_until(lambda: gc.collect() >= 0 and ref() is None, timeout=10, what="the app to be collected")
    wait_until(lambda: not any(t.is_alive() for t in threads), timeout=15, what="the pool's threads to end")
    wait_until(lambda: sessions(admin, app_name) == 0, timeout=15, what="the app's server sessions to close")
    if shared:
        assert "apps=0" in repr(SHARED)


@pytest.mark.no_pgbouncer  # counts the apps' server sessions
def test_many_apps_from_a_factory_do_not_pile_up(pg_dsn: str, app_name: str, admin: connection, tmp_path: Path) -> None:
    refs = [serve_then_drop(pg_dsn, app_name, tmp_path, SHARED, close=False)[0] for _ in range(5)]
    wait_until(lambda: gc.collect() >= 0 and not any(r() for r in refs), timeout=10, what="the apps to be collected")
    wait_until(lambda: sessions(admin, app_name) == 0, timeout=15, what="the apps' server sessions to close")


def test_an_app_in_use_is_kept(pg_dsn: str, app_name: str, tmp_path: Path) -> None:
    # The other way round: a live app keeps its pools however much is collected.
    app = create_app(pg_dsn, app_name, tmp_path, None)
    try:
        gc.collect()
        assert app.test_client().get("/one").text == "1"
    finally:
        app.extensions["pgpool"].close(app)
