"""Sessions ended or cancelled by the server, seen through Flask requests:
pg_terminate_backend, idle_in_transaction_session_timeout, idle_session_timeout
and statement_timeout (set with PGPOOL_CONNECT_ARGS options '-c ...').

A connection the server ended is never handed to a later request; a view whose
own session was ended gets its error (uncaught, a 503); the slot always comes back.
"""

from __future__ import annotations

import threading
import time

import pytest
from support.faults import (
    LIMIT,
    Admin,
    Outcome,
    assert_no_leak,
    fault_app,
    hammer,
    pool_of,
    request_within,
    settled_sessions,
    wait_until,
)


@pytest.fixture
def admin(pg_dsn: str, app_name: str) -> Admin:
    return Admin(pg_dsn, app_name)


def pids(outcomes: list[Outcome]) -> set[int]:
    assert {o.status for o in outcomes} == {200}, outcomes
    return {int(o.body) for o in outcomes}


def test_terminated_idle_connections_are_not_handed_out(pg_dsn: str, admin: Admin, app_name: str) -> None:
    app = fault_app(pg_dsn, app_name)
    pool = pool_of(app)
    served = pids(hammer(app, "/pid", threads=4, per_thread=3, limit=LIMIT))
    # The pool may hold more sessions than served requests: one opened for a
    # waiter that a returned connection served first stays idle in the pool.
    before = settled_sessions(pool, admin)
    assert served <= before
    assert admin.terminate() == len(before)

    after = pids(hammer(app, "/pid", threads=4, per_thread=3, limit=LIMIT))
    assert not before & after
    stats = assert_no_leak(pool)
    assert stats["connections_lost"] >= 1
    settled_sessions(pool, admin)


def test_terminated_during_a_request_frees_the_slot(pg_dsn: str, admin: Admin, app_name: str) -> None:
    app = fault_app(pg_dsn, app_name, PGPOOL_MAXCONN=1)
    box: list[Outcome] = []
    # The view stays in its transaction until the test lets it go on.
    holding = threading.Thread(target=lambda: box.append(request_within(app, "/held", 40)))
    holding.start()
    assert wait_until(lambda: bool(admin.sessions("idle in transaction")), 20.0)
    ((killed, _),) = admin.sessions()
    assert admin.terminate() == 1
    app.config["release"].set()
    holding.join(LIMIT)

    # The view's own connection broke: uncaught, that answers 503 with Retry-After.
    assert (box[0].status, box[0].retry_after) == (503, "1")
    assert_no_leak(pool_of(app))
    # The only slot is free again, with a live connection in it.
    assert pids([request_within(app, "/pid", LIMIT)]) != {killed}


def test_idle_in_transaction_timeout_kills_the_session_not_the_pool(pg_dsn: str, admin: Admin, app_name: str) -> None:
    app = fault_app(
        pg_dsn,
        app_name,
        PGPOOL_MAXCONN=2,
        connect_args={"options": "-c idle_in_transaction_session_timeout=300"},
    )
    pool = pool_of(app)
    assert request_within(app, "/one", LIMIT).status == 200

    # A view that sits in a transaction longer than the server allows.
    held = request_within(app, "/hold/1.0", LIMIT)
    assert (held.status, held.retry_after) == (503, "1")  # its connection broke
    assert_no_leak(pool)

    # Quick requests keep working, on sessions that are not killed.
    assert pids(hammer(app, "/pid", threads=2, per_thread=5, limit=LIMIT))
    assert not admin.sessions("idle in transaction")
    assert_no_leak(pool)
    settled_sessions(pool, admin)


def test_idle_session_timeout_ends_pooled_connections(pg_dsn: str, admin: Admin, app_name: str) -> None:
    """The server closes connections that sit idle in the pool; the pool notices
    at checkout, without a query, and opens new ones."""
    if admin.server_version() < 140000:
        pytest.skip("idle_session_timeout needs PostgreSQL 14")
    # Long enough that a busy machine does not stall a request that long
    # between its checkout and its query (the server would end it in between).
    app = fault_app(pg_dsn, app_name, connect_args={"options": "-c idle_session_timeout=1000"})
    pool = pool_of(app)
    first = pids(hammer(app, "/pid", threads=3, per_thread=2, limit=LIMIT))
    assert wait_until(lambda: not admin.sessions(), 10.0), "the server did not end the idle sessions"

    second = pids(hammer(app, "/pid", threads=3, per_thread=2, limit=LIMIT))
    assert not first & second
    stats = assert_no_leak(pool)
    assert stats["connections_lost"] >= 1


def test_statement_timeout_cancels_the_query_and_keeps_the_connection(pg_dsn: str, admin: Admin, app_name: str) -> None:
    app = fault_app(
        pg_dsn,
        app_name,
        PGPOOL_MAXCONN=1,
        # Long enough for a quick query on a busy machine.
        connect_args={"options": "-c statement_timeout=1000"},
    )
    pool = pool_of(app)
    (pid,) = pids([request_within(app, "/pid", LIMIT)])

    started = time.monotonic()
    cancelled = request_within(app, "/sleep/10.0", LIMIT + 5)
    assert cancelled.status == 500  # QueryCanceled reaches the view
    assert time.monotonic() - started < 8  # not the 10 s asked for

    # The cancelled transaction was rolled back at return; the connection is
    # healthy and reused, not replaced.
    assert pids([request_within(app, "/pid", LIMIT)]) == {pid}
    stats = assert_no_leak(pool)
    assert stats["connections_num"] == 1
    assert stats["returns_bad"] == 0
    assert not admin.sessions("idle in transaction (aborted)")


def test_a_slow_connect_does_not_hold_up_other_requests(pg_dsn: str, app_name: str) -> None:
    """Connecting happens outside the pool's lock: while a new connection is
    being opened (held here until the test lets it finish), a request that
    finds an idle one is served at once."""
    connects: list[float] = []
    slow_connect_started = threading.Event()
    connect_may_finish = threading.Event()

    def configure(conn: object) -> None:
        connects.append(time.monotonic())
        if len(connects) > 1:  # the first connection (the warm-up) is quick
            slow_connect_started.set()
            connect_may_finish.wait(30)

    app = fault_app(pg_dsn, app_name, PGPOOL_MAXCONN=2, PGPOOL_TIMEOUT=30, PGPOOL_CONFIGURE=configure)
    pool = pool_of(app)
    assert request_within(app, "/one", LIMIT).status == 200  # one idle connection now

    box: list[Outcome] = []
    holder = threading.Thread(target=lambda: box.append(request_within(app, "/held", 40)))
    holder.start()  # takes the idle connection until released
    assert wait_until(lambda: pool.get_stats()["pool_available"] == 0, 10.0)
    connecting = threading.Thread(target=lambda: box.append(request_within(app, "/one", 40)))
    connecting.start()  # finds none idle: a second connection is opened, and held up
    assert slow_connect_started.wait(10.0)
    app.config["release"].set()
    holder.join(LIMIT)

    # The holder's connection is idle again (or serves the waiting request,
    # which then gives it back): either way, not behind the held-up connect.
    quick = request_within(app, "/one", LIMIT)
    assert quick.status == 200
    assert pool.get_stats()["pool_size"] == 2  # the second connection is still being opened
    connect_may_finish.set()
    connecting.join(LIMIT)
    assert [o.status for o in box] == [200, 200]
    assert_no_leak(pool)
