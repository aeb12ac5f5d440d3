"""Soak: thousands of mixed requests from many threads on a small pool.

Commits, exceptions after writes, abort(), SQL errors, streamed responses that
query inside the stream, streams that fail, and clients that hang up
mid-stream. Afterwards it proves what users rely on:

* every acknowledged commit is in the table, and no write that was not
  committed is;
* no slot leaked, nobody waits, no server session is left idle in transaction;
* the pool never had more than maxconn connections (sampled from the pool and
  counted on the server);
* the pool did not churn: the connections opened at the start served it all.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import psycopg2
import pytest
from flask import Flask, Response, abort, stream_with_context
from flask.testing import FlaskClient
from psycopg2.extensions import connection
from support.faults import Admin, assert_no_leak, pool_of, settled_sessions
from werkzeug.test import TestResponse

from flask_pgpool import get_db

MAXCONN = 4
THREADS = 16
REQUESTS = 3000
TIME_BUDGET = 60.0  # seconds; the run stops early rather than overrun
STREAM_ROWS = 5

# kind: (weight, statuses it may answer, whether a 200 means "committed")
KINDS: dict[str, tuple[int, set[int], bool]] = {
    "commit": (30, {200}, True),
    "raise": (10, {500}, False),  # exception after a write, not handled by the app
    "abort": (10, {409}, False),  # abort() after a write
    "sqlerror": (10, {400}, False),  # the SQL fails after a write; the app handles psycopg2.Error
    "swallow": (5, {200}, False),  # a write the view never commits, answered 200 anyway
    "stream": (15, {200}, True),  # writes, streams rows read via get_db(), commits at the end
    "stream_fail": (5, {200}, False),  # the generator raises mid-stream
    "hangup": (15, {200}, False),  # the client closes the stream after the first chunks
}
# A checkout may also answer 503 if the pool is saturated for PGPOOL_TIMEOUT;
# the view did not run then, so nothing was written.
POOL_BUSY = 503


def build_app(make_app: Callable[..., Flask], table: str) -> Flask:
    app = make_app(PGPOOL_MAXCONN=MAXCONN, PGPOOL_MINCONN=1, PGPOOL_TIMEOUT=10, TESTING=False)
    # Thousands of expected tracebacks would only slow the run down.
    app.logger.disabled = True

    def write(token: str) -> connection:
        db = get_db()
        with db.cursor() as cur:
            cur.execute(f"INSERT INTO {table} (note) VALUES (%s)", (token,))
        return db

    @app.errorhandler(psycopg2.Error)
    def sql_error(error: psycopg2.Error) -> tuple[str, int]:
        # Handled: teardown sees exc=None, yet the write must not survive.
        return "bad query", 400

    @app.post("/commit/<token>")
    def commit(token: str) -> str:
        write(token).commit()
        return token

    @app.post("/raise/<token>")
    def raise_(token: str) -> str:
        write(token)
        raise RuntimeError("failed after writing")

    @app.post("/abort/<token>")
    def abort_(token: str) -> str:
        write(token)
        abort(409)

    @app.post("/sqlerror/<token>")
    def sqlerror(token: str) -> str:
        with write(token).cursor() as cur:
            cur.execute("SELECT 1 / 0")
        return "unreachable"

    @app.post("/swallow/<token>")
    def swallow(token: str) -> str:
        write(token)
        return "not committed"

    def stream_view(token: str, fail: bool) -> Response:
        # Flask >= 3.1.2 ends the request's app context (our teardown returns
        # the connection) when the view returns, and pushes it again for the
        # stream: the stream's work belongs inside the generator.
        def rows() -> Iterator[str]:
            write(token)
            yield "begin\n"
            for i in range(STREAM_ROWS):
                with get_db().cursor() as cur:
                    cur.execute("SELECT count(*) + %s FROM pg_class", (i,))
                    yield f"{cur.fetchone()}\n"
                if fail and i == 2:
                    raise RuntimeError("the stream broke")
            get_db().commit()
            yield f"committed {token}\n"

        return Response(stream_with_context(rows()), mimetype="text/plain")

    @app.get("/stream/<token>")
    def stream(token: str) -> Response:
        return stream_view(token, fail=False)

    @app.get("/stream_fail/<token>")
    def stream_fail(token: str) -> Response:
        return stream_view(token, fail=True)

    app.add_url_rule("/hangup/<token>", "hangup", stream)
    return app


@dataclass
class Ledger:
    """What the clients saw, shared by the client threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    acked: set[str] = field(default_factory=set)  # 200 for a committing request
    not_committed: set[str] = field(default_factory=set)  # must not be in the table
    statuses: dict[str, set[int]] = field(default_factory=dict)
    done: int = 0
    client_errors: list[str] = field(default_factory=list)

    def record(self, kind: str, token: str, status: int, committed: bool) -> None:
        with self.lock:
            self.done += 1
            self.statuses.setdefault(kind, set()).add(status)
            (self.acked if committed else self.not_committed).add(token)


def run_one(client: FlaskClient, kind: str, token: str, ledger: Ledger) -> None:
    commits = KINDS[kind][2]
    if kind in ("stream", "stream_fail", "hangup"):
        response = client.get(f"/{kind}/{token}", buffered=False)
        if response.status_code != 200:
            ledger.record(kind, token, response.status_code, committed=False)
            response.close()
            return
        body = ""
        try:
            for chunk in body_chunks(response):
                body += chunk.decode()
                if kind == "hangup" and body.count("\n") >= 2:
                    break  # hang up mid-stream
        except RuntimeError:
            assert kind == "stream_fail"
        finally:
            response.close()
        complete = body.endswith(f"committed {token}\n")
        if kind == "stream" and not complete:
            with ledger.lock:
                ledger.client_errors.append(f"stream {token} ended early: {body!r}")
        ledger.record(kind, token, 200, committed=commits and complete)
        return
    response = client.post(f"/{kind}/{token}")
    ledger.record(kind, token, response.status_code, committed=commits and response.status_code == 200)


def body_chunks(response: TestResponse) -> Iterator[bytes]:
    """The chunks of a streamed (buffered=False) test response, as the server sends them."""
    for chunk in response.response:
        yield chunk if isinstance(chunk, bytes) else chunk.encode()


class Monitor(threading.Thread):
    """Samples the pool's size and the server's session count while the soak runs."""

    def __init__(self, app: Flask, admin: Admin) -> None:
        super().__init__(daemon=True, name="soak monitor")
        self.pool = pool_of(app)
        self.admin = admin
        self.stop = threading.Event()
        self.max_pool_size = 0
        self.max_sessions = 0
        self.samples = 0

    def run(self) -> None:
        conn = psycopg2.connect(self.admin.dsn, connect_timeout=5, application_name="pgpool-test-admin")
        conn.autocommit = True
        try:
            last_server_check = 0.0
            while not self.stop.is_set():
                self.max_pool_size = max(self.max_pool_size, self.pool.get_stats()["pool_size"])
                self.samples += 1
                if time.monotonic() - last_server_check > 0.05:
                    last_server_check = time.monotonic()
                    with conn.cursor() as cur:
                        cur.execute(
                            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                            (self.admin.app_name,),
                        )
                        row = cur.fetchone()
                        assert row is not None
                        self.max_sessions = max(self.max_sessions, int(row[0]))
                time.sleep(0.002)
        finally:
            conn.close()


@pytest.mark.slow
def test_soak_mixed_requests(make_app: Callable[..., Flask], table: str, pg_dsn: str, app_name: str) -> None:
    app = build_app(make_app, table)
    admin = Admin(pg_dsn, app_name)
    ledger = Ledger()
    kinds = list(KINDS)
    weights = [KINDS[k][0] for k in kinds]
    deadline = time.monotonic() + TIME_BUDGET
    per_thread = REQUESTS // THREADS
    failures: list[BaseException] = []

    def client_thread(n: int) -> None:
        rng = random.Random(n)
        # A plain test client per thread: each request has its own app context,
        # so each returns its connection at its end, as under a real server.
        client = app.test_client()
        try:
            for i in range(per_thread):
                if time.monotonic() > deadline:
                    return
                kind = rng.choices(kinds, weights)[0]
                run_one(client, kind, f"{kind}-{n}-{i}", ledger)
        except BaseException as exc:
            failures.append(exc)

    monitor = Monitor(app, admin)
    monitor.start()
    threads = [threading.Thread(target=client_thread, args=(n,), daemon=True) for n in range(THREADS)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(1.0, deadline + 30 - time.monotonic()))
    elapsed = time.monotonic() - started
    monitor.stop.set()
    monitor.join(5)

    assert not any(t.is_alive() for t in threads), "a client thread hung"
    assert not failures, failures[0]
    assert not ledger.client_errors, ledger.client_errors[:3]
    # Bounded in time, but it must have been a real soak.
    assert ledger.done >= min(REQUESTS // 3, per_thread * THREADS), (ledger.done, elapsed)

    for kind, seen in ledger.statuses.items():
        assert seen <= KINDS[kind][1] | {POOL_BUSY}, (kind, seen)

    with psycopg2.connect(pg_dsn) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT note FROM {table}")
        stored = {row[0] for row in cur.fetchall()}
    conn.close()
    lost = ledger.acked - stored
    assert not lost, f"{len(lost)} acknowledged commits are missing, e.g. {sorted(lost)[:5]}"
    leaked = ledger.not_committed & stored
    assert not leaked, f"{len(leaked)} uncommitted writes are in the table, e.g. {sorted(leaked)[:5]}"
    assert len(ledger.acked) > 0 and len(ledger.not_committed) > 0

    stats = assert_no_leak(pool_of(app))
    assert not admin.sessions("idle in transaction")
    assert not admin.sessions("idle in transaction (aborted)")
    settled_sessions(pool_of(app), admin)

    assert monitor.samples > 100
    assert monitor.max_pool_size <= MAXCONN
    assert 0 < monitor.max_sessions <= MAXCONN
    # Errors, aborts and hang-ups are rolled back and reused, not reconnected.
    assert stats["connections_num"] <= MAXCONN, stats
    assert stats["returns_bad"] == 0, stats
    assert stats["requests_num"] == ledger.done
    logging.getLogger(__name__).info("soak: %d requests in %.1f s, stats %s", ledger.done, elapsed, stats)


# -- streaming, one request at a time ------------------------------------------


def stream_app(make_app: Callable[..., Flask], table: str) -> Flask:
    app = make_app(PGPOOL_MAXCONN=2, PGPOOL_TIMEOUT=5)

    @app.get("/stream/<token>")
    def stream(token: str) -> Response:
        def rows() -> Iterator[str]:
            with get_db().cursor() as cur:
                cur.execute(f"INSERT INTO {table} (note) VALUES (%s)", (token,))
            for i in range(5):
                with get_db().cursor() as cur:
                    cur.execute("SELECT %s", (i,))
                    yield f"{cur.fetchone()}\n"
            get_db().commit()
            yield "committed\n"

        return Response(stream_with_context(rows()))

    @app.get("/view-then-stream/<token>")
    def view_then_stream(token: str) -> Response:
        with get_db().cursor() as cur:
            cur.execute(f"INSERT INTO {table} (note) VALUES (%s)", (token,))

        def rows() -> Iterator[str]:
            with get_db().cursor() as cur:
                cur.execute(f"SELECT count(*) FROM {table} WHERE note = %s", (token,))
                yield f"{cur.fetchone()}\n"

        return Response(stream_with_context(rows()))

    return app


def notes(admin: Admin, table: str) -> set[str]:
    return {row[0] for row in admin.rows(f"SELECT note FROM {table}")}


def test_stream_holds_its_connection_until_the_end(
    make_app: Callable[..., Flask], table: str, pg_dsn: str, app_name: str
) -> None:
    app = stream_app(make_app, table)
    pool = pool_of(app)
    response = app.test_client().get("/stream/complete", buffered=False)
    chunks = body_chunks(response)
    assert next(chunks) == b"(0,)\n"
    stats = pool.get_stats()
    assert stats["pool_size"] - stats["pool_available"] == 1  # in use by the stream
    assert b"".join(chunks).endswith(b"committed\n")
    response.close()
    assert_no_leak(pool)
    assert notes(Admin(pg_dsn, app_name), table) == {"complete"}


def test_client_hanging_up_mid_stream_rolls_back_and_frees_the_slot(
    make_app: Callable[..., Flask], table: str, pg_dsn: str, app_name: str
) -> None:
    app = stream_app(make_app, table)
    pool = pool_of(app)
    admin = Admin(pg_dsn, app_name)
    for n in range(5):  # more hang-ups than slots: each one must free its slot
        response = app.test_client().get(f"/stream/hangup{n}", buffered=False)
        assert next(body_chunks(response)) == b"(0,)\n"
        response.close()
        assert_no_leak(pool)
    assert notes(admin, table) == set()
    assert not admin.sessions("idle in transaction")
    assert pool.get_stats()["returns_bad"] == 0


def test_stream_sees_the_views_uncommitted_work(
    make_app: Callable[..., Flask], table: str, pg_dsn: str, app_name: str
) -> None:
    app = stream_app(make_app, table)
    response = app.test_client().get("/view-then-stream/token", buffered=False)
    body = b"".join(body_chunks(response))
    response.close()
    assert_no_leak(pool_of(app))
    assert body == b"(1,)\n"
