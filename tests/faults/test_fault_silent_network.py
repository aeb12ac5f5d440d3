"""A network path that goes silent: nothing delivered, answered, reset or refused.

The server runs in a network namespace made by the test and is reached over a
veth pair (tests/support/netns.py); the path is cut by setting both ends of the
pair down, as when a NAT or firewall forgets a connection or a cable is pulled.
A TCP proxy cannot show this: its kernel keeps acknowledging what the client sends.

Each test proves, with PGPOOL_NETWORK_TIMEOUT set small (and once with the
default): a request whose connection is on the dead path fails within the
bound plus a margin, with a 503 and Retry-After; other requests are not held
up; idle connections are found dead without a request paying for it; once the
path is back, requests succeed within seconds.
"""

from __future__ import annotations

import gc
import io
import threading
import time
from collections.abc import Callable, Iterator

import psycopg2
import pytest
from flask import Flask
from support.faults import (
    FAULT_TIMEOUT,
    LIMIT,
    Admin,
    Outcome,
    assert_clean_503,
    assert_no_leak,
    fault_app,
    hammer,
    pool_of,
    request_within,
    wait_until,
)
from support.netns import NetNamespace, NetnsUnavailable
from support.pgcluster import PgCluster, private_cluster

from flask_pgpool import ConnectionPool
from flask_pgpool._timeouts import DEFAULT_NETWORK_TIMEOUT

pytestmark = pytest.mark.slow

#: PGPOOL_NETWORK_TIMEOUT of the quick tests.
BOUND = 3.0
#: Beyond the bound: a retransmission timer, a thread switch, a loaded machine.
MARGIN = 4.0
#: Once the path is back, the first request succeeds within this (reconnect backoff <= 2 s).
BACK_WITHIN = 8.0


@pytest.fixture(scope="module")
def netns() -> Iterator[NetNamespace]:
    try:
        ns = NetNamespace.create()
    except NetnsUnavailable as exc:
        pytest.skip(f"cannot make a network namespace here: {exc}")
    with ns:
        yield ns


@pytest.fixture(scope="module")
def far(netns: NetNamespace) -> Iterator[PgCluster]:
    """A private server inside the namespace, listening on the far end of the path."""
    with private_cluster("silent", host=netns.address, launcher=netns.command) as pg:
        yield pg


@pytest.fixture
def path(netns: NetNamespace, far: PgCluster) -> Iterator[NetNamespace]:
    """The path, carrying packets at the start of the test and again after it."""
    netns.restore()
    far.start()
    yield netns
    netns.restore()


@pytest.fixture
def admin(far: PgCluster, app_name: str) -> Admin:
    # The server's Unix socket does not go through the path: it works while the path is cut.
    return Admin(far.socket_dsn, app_name)


def in_background(app: Flask, url: str, limit: float) -> Callable[[], tuple[Outcome, float]]:
    """Start a request; the returned function waits for (its outcome, when it ended)."""
    box: list[tuple[Outcome, float] | BaseException] = []

    def run() -> None:
        try:
            outcome = request_within(app, url, limit)
            box.append((outcome, time.monotonic()))
        except BaseException as exc:
            box.append(exc)

    thread = threading.Thread(target=run, daemon=True, name=f"request {url}")
    thread.start()

    def result() -> tuple[Outcome, float]:
        thread.join(limit + 5)
        assert box, f"{url} did not end within {limit + 5} s"
        found = box[0]
        if isinstance(found, BaseException):
            raise found
        return found

    return result


def seconds_until_served(app: Flask) -> float:
    """How long, from now, until a request succeeds again."""
    started = time.monotonic()
    served = wait_until(lambda: request_within(app, "/one", LIMIT).status == 200, 30.0, interval=0.1)
    assert served, "requests still fail 30 s after the path came back"
    return time.monotonic() - started


def test_a_query_in_flight_when_the_path_goes_silent_fails_within_the_bound(
    path: NetNamespace, far: PgCluster, admin: Admin, app_name: str, record_property: Callable[[str, object], None]
) -> None:
    app = fault_app(far.dsn, app_name, PGPOOL_NETWORK_TIMEOUT=BOUND, PGPOOL_MAXCONN=2)
    pool = pool_of(app)
    assert request_within(app, "/one", LIMIT).status == 200
    running = in_background(app, "/sleep/60.0", limit=BOUND + MARGIN + 5)
    assert wait_until(lambda: bool(admin.sessions("active")), 5.0), "the query did not start"

    path.cut()
    cut_at = time.monotonic()
    # Meanwhile another request finds no idle connection and cannot open one:
    # it gets its 503 at PGPOOL_TIMEOUT, not at the bound.
    other = request_within(app, "/one", LIMIT)
    assert_clean_503(other)
    assert other.seconds < FAULT_TIMEOUT + 2

    outcome, ended = running()
    detected = ended - cut_at
    record_property("in_flight_detected_s", round(detected, 2))
    assert outcome.status == 503, outcome
    assert outcome.retry_after == "1"
    assert detected <= BOUND + MARGIN, f"the request hung {detected:.1f} s after the cut"
    # The view's connection was given back broken and discarded.
    assert pool.get_stats()["returns_bad"] == 1

    path.restore()
    back = seconds_until_served(app)
    record_property("served_again_after_s", round(back, 2))
    assert back < BACK_WITHIN
    stats = assert_no_leak(pool)
    assert stats["returns_bad"] == 1


def test_idle_connections_on_a_silent_path_are_found_dead_before_a_request_needs_them(
    path: NetNamespace, far: PgCluster, app_name: str, record_property: Callable[[str, object], None]
) -> None:
    # The path counts every connection over it: the earlier tests' apps must be
    # gone, and with them their pools' connections (freed at the next collection).
    assert wait_until(lambda: gc.collect() >= 0 and path.connections() == 0, 20.0), "earlier connections are open"
    app = fault_app(far.dsn, app_name, PGPOOL_NETWORK_TIMEOUT=BOUND, PGPOOL_MAXCONN=3, PGPOOL_TIMEOUT=20)
    pool = pool_of(app)
    # Three requests that hold their connection until all three have one: three
    # connections, however slowly a busy machine starts the threads.
    outcomes: list[Outcome] = []
    holders = [
        threading.Thread(target=lambda: outcomes.append(request_within(app, "/held", 40)), daemon=True)
        for _ in range(3)
    ]
    for holder in holders:
        holder.start()

    def all_three_out() -> bool:
        stats = pool.get_stats()
        return stats["pool_size"] - stats["pool_available"] == 3

    assert wait_until(all_three_out, 30.0), pool.get_stats()
    app.config["release"].set()
    for holder in holders:
        holder.join(LIMIT)
    assert [o.status for o in outcomes] == [200] * 3
    assert assert_no_leak(pool)["pool_available"] == 3
    assert wait_until(lambda: path.connections() == 3, 10.0)

    path.cut()
    cut_at = time.monotonic()
    # The kernel gives up on them by itself: keepalive probes go unanswered.
    assert wait_until(lambda: path.connections() == 0, BOUND + MARGIN), "idle connections still open"
    record_property("idle_detected_s", round(time.monotonic() - cut_at, 2))

    path.restore()
    # The dead connections are seen at checkout without a round trip and replaced:
    # no request fails, none waits for the network.
    outcomes = hammer(app, "/one", threads=3, per_thread=2, limit=LIMIT)
    assert [o.status for o in outcomes] == [200] * 6
    # Anything that waited on the dead path would have taken the bound.
    assert max(o.seconds for o in outcomes) < BOUND
    stats = assert_no_leak(pool)
    assert stats["connections_lost"] == 3
    assert stats["returns_bad"] == 0


def test_a_request_on_an_idle_connection_after_a_silent_cut_fails_within_the_bound(
    path: NetNamespace, far: PgCluster, app_name: str, record_property: Callable[[str, object], None]
) -> None:
    """The connection looks idle and healthy when handed out (no ping yet, the
    cut is seconds old): the view's query goes into the void and the bound ends it."""
    app = fault_app(far.dsn, app_name, PGPOOL_NETWORK_TIMEOUT=BOUND, PGPOOL_MAXCONN=1)
    pool = pool_of(app)
    assert request_within(app, "/one", LIMIT).status == 200

    path.cut()
    outcome = request_within(app, "/one", BOUND + MARGIN + LIMIT)
    record_property("idle_then_query_detected_s", round(outcome.seconds, 2))
    assert outcome.status == 503, outcome
    assert outcome.retry_after == "1"
    assert outcome.seconds <= BOUND + MARGIN
    stats = pool.get_stats()
    assert stats["returns_bad"] == 1  # the view's query failed: the connection came back broken
    assert stats["connections_lost"] == 0  # it was not found dead at checkout

    path.restore()
    assert seconds_until_served(app) < BACK_WITHIN
    assert_no_leak(pool)


def test_by_default_a_silent_path_is_given_up_in_about_30_seconds(
    path: NetNamespace, far: PgCluster, admin: Admin, app_name: str, record_property: Callable[[str, object], None]
) -> None:
    app = fault_app(far.dsn, app_name)  # PGPOOL_NETWORK_TIMEOUT not set
    pool = pool_of(app)
    assert pool.network_timeout == DEFAULT_NETWORK_TIMEOUT == 30
    running = in_background(app, "/sleep/300.0", limit=DEFAULT_NETWORK_TIMEOUT + 2 * MARGIN)
    assert wait_until(lambda: bool(admin.sessions("active")), 5.0), "the query did not start"

    path.cut()
    cut_at = time.monotonic()
    outcome, ended = running()
    detected = ended - cut_at
    record_property("default_detected_s", round(detected, 2))
    assert outcome.status == 503, outcome
    # About 30 s: keepalive probes from 10 s on, every 5 s, given up at 30 s of silence.
    assert DEFAULT_NETWORK_TIMEOUT - 10 <= detected <= DEFAULT_NETWORK_TIMEOUT + MARGIN

    path.restore()
    assert seconds_until_served(app) < BACK_WITHIN
    stats = assert_no_leak(pool)
    assert stats["returns_bad"] == 1


def test_a_slow_query_on_a_healthy_path_is_not_cut(path: NetNamespace, far: PgCluster, app_name: str) -> None:
    """The bound is not a query timeout: the server's kernel answers the probes."""
    app = fault_app(far.dsn, app_name, PGPOOL_NETWORK_TIMEOUT=2)
    outcome = request_within(app, "/sleep/6.0", 6 + LIMIT)
    assert outcome.status == 200, outcome
    stats = assert_no_leak(pool_of(app))
    assert (stats["returns_bad"], stats["connections_num"]) == (0, 1)


def test_a_short_outage_is_ridden_out(path: NetNamespace, far: PgCluster, admin: Admin, app_name: str) -> None:
    """A path silent for less than the bound loses nothing: TCP delivers once it is back."""
    app = fault_app(far.dsn, app_name, PGPOOL_NETWORK_TIMEOUT=8)
    running = in_background(app, "/sleep/3.0", limit=3 + LIMIT)
    assert wait_until(lambda: bool(admin.sessions("active")), 5.0), "the query did not start"
    path.cut()
    time.sleep(1.0)
    path.restore()
    outcome, _ = running()
    assert outcome.status == 200, outcome
    stats = assert_no_leak(pool_of(app))
    assert (stats["returns_bad"], stats["connections_lost"], stats["connections_num"]) == (0, 0, 1)


def _copy_pool(far: PgCluster, app_name: str) -> ConnectionPool:
    return ConnectionPool(0, 1, far.dsn, network_timeout=BOUND, connect_args={"application_name": app_name})


def test_a_copy_from_stdin_sending_into_a_silent_path_fails_within_the_bound(
    path: NetNamespace, far: PgCluster, app_name: str, record_property: Callable[[str, object], None]
) -> None:
    """The client keeps sending and the server never acknowledges: once the
    socket's buffer is full libpq waits to write, and tcp_user_timeout ends it."""
    pool = _copy_pool(far, app_name)
    try:
        conn = pool.getconn()
        with conn.cursor() as cur:
            cur.execute("CREATE TEMP TABLE copied (line text)")
        cut_at: list[float] = []
        chunk = b"a line of a large COPY\n" * 2000

        class Rows:
            """Endless rows; the path goes silent after the first chunk is sent."""

            def read(self, size: int = -1) -> bytes:
                if not cut_at:
                    cut_at.append(time.monotonic())
                elif len(cut_at) == 1:
                    path.cut()
                    cut_at[0] = time.monotonic()
                    cut_at.append(cut_at[0])
                return chunk

            def readline(self, size: int = -1) -> bytes:
                return self.read(size)

        with pytest.raises(psycopg2.OperationalError), conn.cursor() as cur:
            cur.copy_expert("COPY copied FROM STDIN", Rows())
        detected = time.monotonic() - cut_at[0]
        record_property("copy_in_detected_s", round(detected, 2))
        assert len(cut_at) == 2, "the path was not cut during the COPY"
        assert detected <= BOUND + MARGIN, f"the COPY hung {detected:.1f} s after the cut"
        pool.putconn(conn)
        assert pool.get_stats()["returns_bad"] == 1
    finally:
        pool.closeall()


def test_a_copy_to_stdout_waiting_on_a_silent_path_fails_within_the_bound(
    path: NetNamespace, far: PgCluster, admin: Admin, app_name: str, record_property: Callable[[str, object], None]
) -> None:
    pool = _copy_pool(far, app_name)
    try:
        conn = pool.getconn()
        failure: list[BaseException] = []

        def copy_out() -> None:
            try:
                with conn.cursor() as cur:
                    cur.copy_expert("COPY (SELECT pg_sleep(60)) TO STDOUT", io.BytesIO())
            except BaseException as exc:
                failure.append(exc)

        copying = threading.Thread(target=copy_out, daemon=True, name="copy-out")
        copying.start()
        assert wait_until(lambda: bool(admin.sessions("active")), 5.0), "the COPY did not start"
        path.cut()
        cut_at = time.monotonic()
        copying.join(BOUND + MARGIN + 5)
        detected = time.monotonic() - cut_at
        record_property("copy_out_detected_s", round(detected, 2))
        assert not copying.is_alive(), f"the COPY still waited {detected:.1f} s after the cut"
        assert failure and isinstance(failure[0], psycopg2.OperationalError), failure
        assert detected <= BOUND + MARGIN
        pool.putconn(conn)
        assert pool.get_stats()["returns_bad"] == 1
    finally:
        pool.closeall()
