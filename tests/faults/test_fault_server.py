"""Faults of the server itself, seen through Flask requests: restart, stop/start,
and a database that is down when the app starts.

Each test proves: requests either succeed or get a clean 503 with Retry-After
(never a 500 for a pool problem, never a hang), the app recovers without a
restart, and no slot is left in use afterwards.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest
from support.faults import (
    LIMIT,
    RECOVERY,
    Admin,
    Outcome,
    assert_clean_503,
    assert_no_leak,
    fault_app,
    hammer,
    pool_of,
    recovers,
    request_within,
    settled_sessions,
    wait_until,
)
from support.pgcluster import PgCluster

pytestmark = pytest.mark.slow


@pytest.fixture
def admin(pg: PgCluster, app_name: str) -> Admin:
    return Admin(pg.dsn, app_name)


def test_restart_next_request_gets_a_fresh_connection(pg: PgCluster, admin: Admin, app_name: str) -> None:
    app = fault_app(pg.dsn, app_name)
    pids_before = {int(o.body) for o in hammer(app, "/pid", threads=4, per_thread=3, limit=LIMIT)}
    # A connection opened for a waiter that a returned one served first stays
    # idle in the pool: the server may have more sessions than pids served.
    assert pids_before and pids_before <= {pid for pid, _ in admin.sessions()}

    pg.restart()

    # Every pooled connection is dead now; none may be handed to a view.
    outcomes = hammer(app, "/pid", threads=4, per_thread=3, limit=LIMIT)
    assert [o.status for o in outcomes] == [200] * 12
    assert not pids_before & {int(o.body) for o in outcomes}
    stats = assert_no_leak(pool_of(app))
    assert stats["connections_lost"] >= 1
    settled_sessions(pool_of(app), admin)


def test_immediate_stop_then_start(pg: PgCluster, admin: Admin, app_name: str) -> None:
    app = fault_app(pg.dsn, app_name)
    assert request_within(app, "/one", LIMIT).status == 200

    pg.stop("immediate")  # a crash: no goodbye message on the sockets
    down = hammer(app, "/one", threads=4, per_thread=2, limit=LIMIT)
    for outcome in down:
        assert_clean_503(outcome)
    pg.start()

    assert recovers(app)
    assert_no_leak(pool_of(app))
    assert not admin.sessions("idle in transaction")


def test_stop_during_requests_then_start(pg: PgCluster, admin: Admin, app_name: str) -> None:
    """Requests running when the server goes down fail; none hangs; the pool recovers."""
    app = fault_app(pg.dsn, app_name)
    results: list[Outcome] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            results.append(request_within(app, "/sleep/0.05", LIMIT))

    def served(since: int) -> bool:
        return any(o.status == 200 for o in results[since:])

    clients = [threading.Thread(target=client, daemon=True) for _ in range(4)]
    for c in clients:
        c.start()
    assert wait_until(lambda: served(0), 10.0), "no request succeeded before the stop"
    pg.stop("fast")
    time.sleep(1.0)  # requests meet the stopped server meanwhile
    restarted_at = len(results)
    pg.start()
    assert wait_until(lambda: served(restarted_at), RECOVERY), "no request succeeded after the start"
    stop.set()
    for c in clients:
        c.join(LIMIT + 2)
    assert not any(c.is_alive() for c in clients), "a client hung"

    statuses = [o.status for o in results]
    # 200 before and after; 503 while the pool could not connect; 500 only for
    # the views whose own query was cut by the shutdown (the view's error, not
    # the pool's): at most one per client. A dead pooled connection handed to a
    # later request would add more.
    assert set(statuses) <= {200, 503, 500}
    assert statuses.count(500) <= len(clients)
    assert 200 in statuses
    assert recovers(app)
    assert_no_leak(pool_of(app))


def test_database_down_when_app_starts(pg: PgCluster, admin: Admin, app_name: str) -> None:
    pg.stop()
    app = fault_app(pg.dsn, app_name)  # init_app opens nothing, so it cannot fail
    assert pool_of(app).get_stats()["connections_num"] == 0

    for _ in range(3):
        outcome = request_within(app, "/one", LIMIT)
        assert_clean_503(outcome)
        assert outcome.seconds < LIMIT
    stats = pool_of(app).get_stats()
    assert stats["connections_errors"] >= 1
    assert stats["pool_size"] == 0

    pg.start()
    assert recovers(app), "the app did not recover without a restart"
    assert request_within(app, "/one", LIMIT).status == 200
    assert_no_leak(pool_of(app))
    settled_sessions(pool_of(app), admin)


def test_503_is_quick_when_the_server_refuses(pg: PgCluster, app_name: str) -> None:
    """A refused connect is not retried in a tight loop until the timeout: the
    request waits at most PGPOOL_TIMEOUT, and the failure says why."""
    pg.stop()
    app = fault_app(pg.dsn, app_name, PGPOOL_TIMEOUT=1)
    outcome = request_within(app, "/one", LIMIT)
    assert_clean_503(outcome)
    assert outcome.seconds < 1 + 4.0  # PGPOOL_TIMEOUT, with room for a busy machine
    stats = pool_of(app).get_stats()
    # Backoff: a handful of attempts in one second, not thousands.
    assert 1 <= stats["connections_errors"] <= 10
    assert stats["requests_errors"] == 1


@pytest.mark.parametrize("source", ["PGPOOL_DSN", "DATABASE_URL"])
def test_a_server_known_to_be_down_fails_fast_then_recovers(
    pg: PgCluster, app_name: str, source: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing listens: requests get their 503 in about a second, not after
    PGPOOL_TIMEOUT, the log names where the DSN came from, and requests
    succeed again within seconds of the server coming back."""
    caplog.set_level(logging.WARNING, logger="flask_pgpool")
    pg.stop()
    config: dict[str, Any] = {"PGPOOL_TIMEOUT": 10}
    if source == "DATABASE_URL":
        monkeypatch.setenv("DATABASE_URL", pg.dsn)
        config["PGPOOL_DSN"] = None
    app = fault_app(pg.dsn, app_name, **config)
    for _ in range(3):
        outcome = request_within(app, "/one", LIMIT)
        assert_clean_503(outcome)
        # About a second, with room for a busy machine: not PGPOOL_TIMEOUT (10 s).
        assert outcome.seconds < 5.0, f"waited {outcome.seconds:.1f} s for a server known to be down"
    logged = [r.getMessage() for r in caplog.records if "answering 503" in r.getMessage()]
    assert logged and all("could not connect" in line for line in logged)
    expected = "PGPOOL_DSN" if source == "PGPOOL_DSN" else "DATABASE_URL"
    assert all(expected in line for line in logged), logged

    started = time.monotonic()
    status = app.test_cli_runner().invoke(args=["pgpool-status"])
    assert status.exit_code == 1
    assert time.monotonic() - started < 5.0

    pg.start()
    up_at = time.monotonic()
    assert recovers(app)
    # The reconnect backoff is capped at 2 s; the rest is room for a busy machine.
    assert time.monotonic() - up_at < 10.0, "requests did not succeed again within seconds of the server's return"
    assert_no_leak(pool_of(app))
