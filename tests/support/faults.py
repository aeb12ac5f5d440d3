"""Helpers for the fault and soak tests: a small app, bounded requests, leak checks.

Every request made here runs in a thread joined with a deadline, so a test
that meets a hang fails with a message instead of hanging the suite.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg2
from flask import Flask
from psycopg2.extensions import connection

from flask_pgpool import ConnectionPool, PgPool, get_db

__all__ = [
    "LIMIT",
    "RECOVERY",
    "Admin",
    "Outcome",
    "assert_clean_503",
    "assert_no_leak",
    "fault_app",
    "hammer",
    "pool_of",
    "recovers",
    "request_within",
    "settled_sessions",
    "wait_until",
]

#: The pool settings of the fault apps: short, so faults show up fast.
FAULT_TIMEOUT = 2.0
FAULT_CONNECT_TIMEOUT = 2  # libpq's smallest effective connect_timeout
#: A checkout gives up after PGPOOL_TIMEOUT; a connect under way at that
#: moment ends within libpq's 2 s granularity. Beyond that, plus a margin for a
#: busy machine, a request counts as hung.
LIMIT = FAULT_TIMEOUT + 2 + 3.0
#: The pool retries connecting with a backoff of at most 10 s.
RECOVERY = 20.0


@dataclass
class Outcome:
    """What one request got, and how long it took."""

    status: int
    seconds: float
    body: str
    retry_after: str | None


def fault_app(dsn: str, app_name: str, *, connect_args: dict[str, Any] | None = None, **config: Any) -> Flask:
    """A Flask app with PgPool on ``dsn`` and a few views that use ``get_db()``.

    TESTING is off: errors become responses (500, 503) as in production.
    Views:
      /one                 SELECT 1
      /pid                 the server process id of the request's connection
      /sleep/<s>           SELECT pg_sleep(s)
      /hold/<s>            open a transaction, stay idle in it for s seconds, query again
      /held                the same until the test sets app.config["release"] (at most 30 s)
      /insert/<table>/<t>  insert t and commit
    """
    app = Flask(f"fault_app_{app_name}")
    app.config.update(
        TESTING=False,
        PGPOOL_DSN=dsn,
        PGPOOL_CONNECT_ARGS={"application_name": app_name, **(connect_args or {})},
        PGPOOL_TIMEOUT=FAULT_TIMEOUT,
        PGPOOL_CONNECT_TIMEOUT=FAULT_CONNECT_TIMEOUT,
        PGPOOL_MAXCONN=4,
    )
    app.config.update(config)
    app.config["release"] = threading.Event()
    PgPool(app)

    @app.get("/one")
    def one() -> str:
        with get_db().cursor() as cur:
            cur.execute("SELECT 1")
            return str(_first(cur))

    @app.get("/pid")
    def pid() -> str:
        with get_db().cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            return str(_first(cur))

    @app.get("/sleep/<float:seconds>")
    def sleep(seconds: float) -> str:
        with get_db().cursor() as cur:
            cur.execute("SELECT pg_sleep(%s)", (seconds,))
        return "slept"

    @app.get("/hold/<float:seconds>")
    def hold(seconds: float) -> str:
        db = get_db()
        with db.cursor() as cur:
            cur.execute("SELECT 1")  # opens the transaction
            time.sleep(seconds)  # idle in transaction, as a slow view would be
            cur.execute("SELECT 2")
        return "held"

    @app.get("/held")
    def held() -> str:
        db = get_db()
        with db.cursor() as cur:
            cur.execute("SELECT 1")  # opens the transaction
            app.config["release"].wait(30)
            cur.execute("SELECT 2")
        return "held"

    @app.post("/insert/<table>/<token>")
    def insert(table: str, token: str) -> str:
        db = get_db()
        with db.cursor() as cur:
            cur.execute(f"INSERT INTO {table} (note) VALUES (%s)", (token,))
        db.commit()
        return token

    return app


def _first(cur: Any) -> Any:
    row = cur.fetchone()
    assert row is not None
    return row[0]


def pool_of(app: Flask) -> ConnectionPool:
    ext: PgPool = app.extensions["pgpool"]
    return ext.get_pool(app=app)


def request_within(app: Flask, path: str, limit: float, method: str = "GET") -> Outcome:
    """Make one request with a fresh test client; fail the test if it takes over ``limit`` s."""
    box: list[Outcome | BaseException] = []

    def run() -> None:
        started = time.monotonic()
        try:
            with app.test_client() as client:
                response = client.open(path, method=method)
                box.append(
                    Outcome(
                        status=response.status_code,
                        seconds=time.monotonic() - started,
                        body=response.get_data(as_text=True),
                        retry_after=response.headers.get("Retry-After"),
                    )
                )
        except BaseException as exc:  # re-raised in the test's thread
            box.append(exc)

    thread = threading.Thread(target=run, daemon=True, name=f"request {path}")
    thread.start()
    thread.join(limit)
    if thread.is_alive():
        raise AssertionError(f"{method} {path} hung: no answer within {limit} s")
    result = box[0]
    if isinstance(result, BaseException):
        raise result
    return result


def hammer(app: Flask, path: str, *, threads: int, per_thread: int, limit: float) -> list[Outcome]:
    """``threads`` clients each make ``per_thread`` requests; every one bounded by ``limit``."""
    outcomes: list[Outcome] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(per_thread):
            try:
                outcome = request_within(app, path, limit)
            except BaseException as exc:
                with lock:
                    errors.append(exc)
                return
            with lock:
                outcomes.append(outcome)

    workers = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(limit * per_thread + 5)
    if errors:
        raise errors[0]
    assert not any(w.is_alive() for w in workers), "a client thread did not finish"
    return outcomes


def assert_clean_503(outcome: Outcome) -> None:
    """The pool could not serve: a 503 with Retry-After, in bounded time."""
    assert outcome.status == 503, outcome
    assert outcome.retry_after == "1"
    assert "database is busy or unreachable" in outcome.body
    assert outcome.seconds < LIMIT


def recovers(app: Flask, path: str = "/one") -> bool:
    """Requests succeed again within RECOVERY s (each one bounded), no restart."""
    return wait_until(lambda: request_within(app, path, LIMIT).status == 200, RECOVERY, interval=0.2)


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` s have passed."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def assert_no_leak(pool: ConnectionPool, timeout: float = 5.0) -> dict[str, int]:
    """Once the requests are over, every slot is idle and nobody waits.

    Polled briefly: the housekeeper may be opening a connection to refill
    ``minconn``, which counts in pool_size until it is ready.
    """
    stats: dict[str, int] = {}

    def idle() -> bool:
        stats.update(pool.get_stats())
        return stats["pool_size"] == stats["pool_available"] and stats["requests_waiting"] == 0

    assert wait_until(idle, timeout), f"slots still in use or waiting after the requests ended: {stats}"
    return stats


def settled_sessions(pool: ConnectionPool, admin: Admin, timeout: float = 10.0) -> set[int]:
    """The pids of the app's server sessions, once the pool is idle and the server agrees with it.

    Polled: a connection being opened counts in pool_size before its session
    shows on the server, and a session the pool closed (or the server ended)
    may still show for a moment after.
    """
    seen: dict[str, Any] = {}

    def agree() -> bool:
        stats = pool.get_stats()
        seen["stats"] = stats
        seen["pids"] = {pid for pid, _ in admin.sessions()}
        return stats["pool_size"] == stats["pool_available"] == len(seen["pids"]) and not stats["requests_waiting"]

    assert wait_until(agree, timeout), f"the pool and the server disagree: {seen}"
    return set(seen["pids"])


class Admin:
    """Looks at and hurts the server from outside the pool.

    Each call opens its own short connection, so the server may be restarted
    between calls.
    """

    def __init__(self, dsn: str, app_name: str) -> None:
        self.dsn = dsn
        self.app_name = app_name

    def rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run ``sql`` in autocommit; its rows (none for a statement without a result)."""
        conn: connection = psycopg2.connect(self.dsn, connect_timeout=5, application_name="pgpool-test-admin")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(sql, args)
                return cur.fetchall() if cur.description else []
        finally:
            conn.close()

    def sessions(self, state: str | None = None) -> list[tuple[Any, ...]]:
        """(pid, state) of the app's server sessions."""
        return self.rows(
            "SELECT pid, state FROM pg_stat_activity WHERE application_name = %s"
            " AND (%s::text IS NULL OR state = %s) ORDER BY pid",
            (self.app_name, state, state),
        )

    def terminate(self, state: str | None = None) -> int:
        """End the app's sessions (in ``state``, or all); wait (bounded) until each is gone."""
        pids = [pid for pid, _ in self.sessions(state)]
        if not pids:
            return 0
        rows = self.rows("SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM unnest(%s) AS pid", (pids,))
        # pg_terminate_backend only signals; wait until the sessions are gone.
        gone = wait_until(lambda: not {pid for pid, _ in self.sessions()} & set(pids), 5.0)
        assert gone, f"sessions {pids} did not end"
        return int(rows[0][0])

    def server_version(self) -> int:
        return int(self.scalar("SHOW server_version_num"))

    def scalar(self, sql: str, args: tuple[Any, ...] = ()) -> Any:
        return self.rows(sql, args)[0][0]

    def execute(self, sql: str, args: tuple[Any, ...] = ()) -> None:
        self.rows(sql, args)
