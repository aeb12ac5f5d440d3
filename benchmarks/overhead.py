"""Where flask-pgpool's per-request time goes: ``python -m benchmarks.overhead [--dsn DSN]``.

Times each piece of the fast path (checkout, health check, return, get_db,
teardown) in one thread, interleaved, and prints the median cost of each in
microseconds of this thread's CPU time, next to the cost of the same step
with a dedicated connection or psycopg2's ThreadedConnectionPool.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

from flask import Flask
from flask.globals import _cv_app
from psycopg2.pool import ThreadedConnectionPool

from flask_pgpool import ConnectionPool, get_db
from flask_pgpool._health import peek_state, poller_for

from .apps import dedicated_app, pgpool_app
from .apps.common import make_app
from .database import open_database
from .micro import _interleave


def _cases(dsn: str) -> tuple[dict[str, Callable[[], Any]], Callable[[], None]]:
    ours = ConnectionPool(1, 4, dsn)
    ours_no_check = ConnectionPool(1, 4, dsn, health_check=False)
    theirs = ThreadedConnectionPool(1, 4, dsn)
    idle = ours.getconn()
    idle_poller = poller_for(idle)
    ours.putconn(idle)
    pg_app = pgpool_app.create_app(dsn, 4)
    dedicated = dedicated_app.create_app(dsn, 4)
    pg_client, dedicated_client = pg_app.test_client(), dedicated.test_client()
    dedicated_get = dedicated.view_functions["db"]  # warms its thread's connection
    with dedicated.test_request_context():
        dedicated_get()

    def app_context(app: Any, work: Callable[[], Any] | None = None) -> Callable[[], None]:
        def op() -> None:
            with app.app_context():
                if work is not None:
                    work()

        return op

    lean_ours = _lean_app(dsn, ConnectionPool(1, 4, dsn)).test_client()
    lean_theirs = _lean_app(dsn, ThreadedConnectionPool(1, 4, dsn)).test_client()

    cases: dict[str, Callable[[], Any]] = {
        "ThreadedConnectionPool getconn+putconn": lambda: theirs.putconn(theirs.getconn()),
        "ConnectionPool getconn+putconn": lambda: ours.putconn(ours.getconn()),
        "ConnectionPool getconn+putconn, health_check=False": lambda: ours_no_check.putconn(ours_no_check.getconn()),
        "health.peek_state(idle connection)": lambda: peek_state(idle, idle_poller),
        "os.getpid() (pid check, 2 per checkout)": os.getpid,
        "app context push+pop, dedicated app": app_context(dedicated),
        "app context push+pop, flask-pgpool app (teardown)": app_context(pg_app),
        "app context + get_db() + teardown return": app_context(pg_app, get_db),
        "test client GET /nodb, dedicated app": lambda: dedicated_client.get("/nodb"),
        "test client GET /nodb, flask-pgpool app": lambda: pg_client.get("/nodb"),
        "test client GET /db, dedicated app": lambda: dedicated_client.get("/db"),
        "test client GET /db, flask-pgpool app": lambda: pg_client.get("/db"),
        "test client GET /db, lean glue + ConnectionPool": lambda: lean_ours.get("/db"),
        "test client GET /db, lean glue + ThreadedConnectionPool": lambda: lean_theirs.get("/db"),
    }

    def close() -> None:
        ours.closeall()
        ours_no_check.closeall()
        theirs.closeall()
        pg_app.extensions["pgpool"].close(pg_app)

    return cases, close


def _lean_app(dsn: str, pool: Any) -> Flask:
    """A prototype of leaner glue: one context lookup per checkout and per teardown.

    get_db() resolves the app context several times through Werkzeug's
    LocalProxy (has_app_context, current_app, g); this reads it once and keeps
    the connection in the context's ``g.__dict__``. It measures what that
    change to the extension would save; it is not the extension.
    """
    key = "_bench_lean_conn"

    def get_conn() -> Any:
        ns = _cv_app.get().g.__dict__
        conn = ns.get(key)
        if conn is None:
            conn = ns[key] = pool.getconn()
        return conn

    app = make_app("lean", get_conn)

    @app.teardown_appcontext
    def give_back(exc: BaseException | None) -> None:
        conn = _cv_app.get().g.__dict__.pop(key, None)
        if conn is not None:
            pool.putconn(conn)

    return app


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.overhead", description=__doc__)
    ap.add_argument("--dsn", default=os.environ.get("BENCH_DSN"))
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("-n", type=int, default=20, help="operations per block")
    args = ap.parse_args(argv)
    db = open_database(args.dsn)
    try:
        cases, close = _cases(db.dsn)
        try:
            samples = _interleave(cases, args.n, args.rounds)
        finally:
            close()
    finally:
        db.close()
    print(f"{'step':<60} {'CPU us':>8} {'wall us':>8}")
    for name, times in samples.items():
        cpu = sorted(c for _, c in times)[len(times) // 2] * 1e6
        wall = sorted(w for w, _ in times)[len(times) // 2] * 1e6
        print(f"{name:<60} {cpu:8.2f} {wall:8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
