"""Where flask-pgpool's per-request time goes: ``python -m benchmarks.overhead [--dsn DSN]``.

Times each piece of the fast path (checkout, health check, return, get_db,
teardown) in one thread, interleaved, and prints the median cost of each in
microseconds of this thread's CPU time, next to the cost of the same step
with a dedicated connection or psycopg2's ThreadedConnectionPool.

``--instructions`` counts instead the instructions one test-client request
executes, under valgrind, for a dedicated connection per thread, a lean glue
on the pool and the extension (see :mod:`benchmarks.instructions`): unlike
times, they do not move with the machine's load.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg2.extensions
from flask import Flask
from psycopg2.pool import ThreadedConnectionPool

from flask_pgpool import ConnectionPool, PgPool, get_db
from flask_pgpool._health import peek_state, poller_for
from flask_pgpool._leases import Lease

from . import instructions
from .apps import dedicated_app, pgpool_app
from .apps.common import make_app
from .database import open_database
from .micro import _interleave
from .options import names_from

#: Calls of a checked connection method per operation, in its cases.
CALLS = 20


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

    checked, unchecked = _check_pair(dsn)
    checked_client, unchecked_client = checked.test_client(), unchecked.test_client()
    # A connection leased to an app context, as get_db() leaves it, used in
    # that context: CALLS checked calls per operation, against unchecked ones.
    checked_ctx, unchecked_ctx = checked.app_context(), unchecked.app_context()
    checked_pool = checked.extensions["pgpool"].get_pool(app=checked)
    unchecked_pool = unchecked.extensions["pgpool"].get_pool(app=unchecked)
    leased_conn, unchecked_conn = checked_pool.getconn(), unchecked_pool.getconn()
    lease = Lease(checked_ctx, checked_ctx, "default", lambda conn: None, leased_conn, guarded=True)

    def calls(ctx: Any, method: Callable[[], Any]) -> Callable[[], None]:
        def op() -> None:
            with ctx:
                for _ in range(CALLS):
                    method()

        return op

    lean_ours = instructions.lean_app(dsn, ConnectionPool(1, 4, dsn)).test_client()
    lean_theirs = instructions.lean_app(dsn, ThreadedConnectionPool(1, 4, dsn)).test_client()

    cases: dict[str, Callable[[], Any]] = {
        "ThreadedConnectionPool getconn+putconn": lambda: theirs.putconn(theirs.getconn()),
        "ConnectionPool getconn+putconn": lambda: ours.putconn(ours.getconn()),
        "ConnectionPool getconn+putconn, health_check=False": lambda: ours_no_check.putconn(ours_no_check.getconn()),
        "health.peek_state(idle connection)": lambda: peek_state(idle, idle_poller),
        "os.getpid() (pid check, 2 per checkout)": os.getpid,
        "app context push+pop, dedicated app": app_context(dedicated),
        "app context push+pop, flask-pgpool app (teardown)": app_context(pg_app),
        "app context + get_db() + teardown return": app_context(pg_app, get_db),
        "app context + get_db() + teardown return, use-after-end check": app_context(checked, get_db),
        "app context + get_db() + teardown return, no use-after-end check": app_context(unchecked, get_db),
        f"app context + {CALLS} x cursor() + close(), use-after-end check": calls(
            checked_ctx, lambda: leased_conn.cursor().close()
        ),
        f"app context + {CALLS} x cursor() + close(), no use-after-end check": calls(
            unchecked_ctx, lambda: unchecked_conn.cursor().close()
        ),
        f"app context + {CALLS} x rollback() (no transaction), use-after-end check": calls(
            checked_ctx, leased_conn.rollback
        ),
        f"app context + {CALLS} x rollback() (no transaction), no use-after-end check": calls(
            unchecked_ctx, unchecked_conn.rollback
        ),
        "test client GET /nodb, dedicated app": lambda: dedicated_client.get("/nodb"),
        "test client GET /nodb, flask-pgpool app": lambda: pg_client.get("/nodb"),
        "test client GET /db, dedicated app": lambda: dedicated_client.get("/db"),
        "test client GET /db, flask-pgpool app": lambda: pg_client.get("/db"),
        "test client GET /db, use-after-end check": lambda: checked_client.get("/db"),
        "test client GET /db, no use-after-end check": lambda: unchecked_client.get("/db"),
        "test client GET /db, lean glue + ConnectionPool": lambda: lean_ours.get("/db"),
        "test client GET /db, lean glue + ThreadedConnectionPool": lambda: lean_theirs.get("/db"),
    }

    def close() -> None:
        ours.closeall()
        ours_no_check.closeall()
        theirs.closeall()
        pg_app.extensions["pgpool"].close(pg_app)
        lease.end()
        checked_pool.putconn(leased_conn)
        unchecked_pool.putconn(unchecked_conn)
        for app in (checked, unchecked):
            app.extensions["pgpool"].close(app)

    return cases, close


def _plain_connection(dsn: str, **kwargs: Any) -> Any:
    return psycopg2.extensions.connection(dsn, **kwargs)


def _check_pair(dsn: str) -> tuple[Flask, Flask]:
    """Two flask-pgpool apps made alike, with and without the check that
    refuses a connection used after its request.

    A ``connection_factory`` that is a function, not a connection class,
    cannot be given the check: the difference between the two is its cost.
    """
    apps = []
    for factory in (psycopg2.extensions.connection, _plain_connection):
        app = make_app("check" if factory is psycopg2.extensions.connection else "nocheck", get_db)
        app.config.update(PGPOOL_DSN=dsn, PGPOOL_MAXCONN=4, PGPOOL_CONNECT_ARGS={"connection_factory": factory})
        PgPool(app)
        apps.append(app)
    return apps[0], apps[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.overhead", description=__doc__)
    ap.add_argument("--dsn", default=os.environ.get("BENCH_DSN"))
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("-n", type=int, default=20, help="operations per block")
    counting = ap.add_argument_group("instructions per request (valgrind), instead of times")
    counting.add_argument(
        "--instructions", action="store_true", help="count instructions per request under valgrind's callgrind"
    )
    counting.add_argument(
        "--cases",
        type=names_from(instructions.CASES, "case"),
        default=list(instructions.CASES),
        help=f"comma-separated, of: {', '.join(instructions.CASES)}",
    )
    counting.add_argument("--requests", type=int, default=200, help="requests per counted run")
    counting.add_argument("--runs", type=int, default=3, help="counted runs per case (the median is reported)")
    counting.add_argument("--code", type=Path, help="the checkout whose flask_pgpool is measured (default: this one)")
    counting.add_argument("--keep", type=Path, help="keep the callgrind files here (for callgrind_annotate)")
    args = ap.parse_args(argv)
    db = open_database(args.dsn)
    try:
        if args.instructions:
            counts = instructions.measure(
                db.dsn, args.cases, requests=args.requests, runs=args.runs, code=args.code, keep=args.keep
            )
            instructions.print_counts(counts, args.code)
            return 0
        cases, close = _cases(db.dsn)
        try:
            samples = _interleave(cases, args.n, args.rounds)
        finally:
            close()
    finally:
        db.close()
    width = max(len(name) for name in samples)
    print(f"{'step':<{width}} {'CPU us':>8} {'wall us':>8}")
    for name, times in samples.items():
        cpu = sorted(c for _, c in times)[len(times) // 2] * 1e6
        wall = sorted(w for w, _ in times)[len(times) // 2] * 1e6
        print(f"{name:<{width}} {cpu:8.2f} {wall:8.2f}")
    _print_check_cost(samples)
    return 0


def _print_check_cost(samples: dict[str, list[tuple[float, float]]]) -> None:
    """What refusing a connection used after its request costs, against a whole request (CPU medians).

    Per call of a checked method, and for the benchmark's view (one get_db(),
    one cursor(), one rollback()); the whole requests' difference is printed
    too, but on a shared machine it is within the noise of a request.
    """

    def cost(case: str) -> float:
        def cpu(name: str) -> float:
            times = sorted(c for _, c in samples[name])
            return times[len(times) // 2] * 1e6

        return cpu(f"{case}, use-after-end check") - cpu(f"{case}, no use-after-end check")

    request = sorted(c for _, c in samples["test client GET /db, flask-pgpool app"])
    request_us = request[len(request) // 2] * 1e6
    cursor = cost(f"app context + {CALLS} x cursor() + close()") / CALLS
    rollback = cost(f"app context + {CALLS} x rollback() (no transaction)") / CALLS
    checkout = cost("app context + get_db() + teardown return")
    view = checkout + cursor + rollback
    print(
        f"use-after-end check: cursor() {cursor:+.2f} us, rollback() {rollback:+.2f} us, "
        f"get_db() and its return {checkout:+.2f} us"
    )
    print(f"  for the view of GET /db: {view:+.2f} us CPU, {view / request_us:+.2%} of a test client GET /db")
    print(f"  whole requests compared: {cost('test client GET /db'):+.2f} us CPU")


if __name__ == "__main__":
    raise SystemExit(main())
