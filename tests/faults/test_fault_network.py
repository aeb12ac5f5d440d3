"""Network faults between the app and the server, through a TCP proxy:
connections cut (RST), a silent blackhole, and a slow link (slow connects).

Each test proves: requests either succeed or get a clean 503 (never a 500 for
a pool problem, never a hang beyond PGPOOL_TIMEOUT + PGPOOL_CONNECT_TIMEOUT),
the app recovers when the network does, and no slot is left in use.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from support.faults import (
    LIMIT,
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
from support.netproxy import TcpProxy
from support.pgcluster import PgCluster

pytestmark = pytest.mark.slow


@pytest.fixture
def proxy(cluster: PgCluster) -> Iterator[TcpProxy]:
    with TcpProxy((cluster.host, cluster.port)) as tcp_proxy:
        yield tcp_proxy


@pytest.fixture
def admin(cluster: PgCluster, app_name: str) -> Admin:
    return Admin(cluster.dsn, app_name)


def proxied(proxy: TcpProxy) -> str:
    return proxy.dsn(user="postgres", dbname="postgres")


def test_cut_connections_are_replaced_not_handed_out(proxy: TcpProxy, admin: Admin, app_name: str) -> None:
    app = fault_app(proxied(proxy), app_name)
    assert {o.status for o in hammer(app, "/one", threads=4, per_thread=3, limit=LIMIT)} == {200}
    pool = pool_of(app)
    assert pool.get_stats()["pool_available"] >= 1

    # Every pooled connection is reset, then the network works again at once:
    # the next requests must get new connections, not the dead ones.
    proxy.drop()
    proxy.pass_through()
    outcomes = hammer(app, "/one", threads=4, per_thread=3, limit=LIMIT)
    assert [o.status for o in outcomes] == [200] * 12
    stats = assert_no_leak(pool)
    assert stats["connections_lost"] >= 1
    # The server may take a moment to notice the sessions the proxy cut.
    settled_sessions(pool, admin)


def test_network_down_gives_503_then_recovers(proxy: TcpProxy, app_name: str) -> None:
    app = fault_app(proxied(proxy), app_name)
    assert request_within(app, "/one", LIMIT).status == 200

    proxy.drop()  # resets current connections and every new one
    for outcome in hammer(app, "/one", threads=4, per_thread=2, limit=LIMIT):
        assert_clean_503(outcome)
    assert pool_of(app).get_stats()["connections_errors"] >= 1

    proxy.pass_through()
    assert recovers(app)
    assert_no_leak(pool_of(app))


def test_cut_during_a_query_frees_the_slot(proxy: TcpProxy, admin: Admin, app_name: str) -> None:
    app = fault_app(proxied(proxy), app_name, PGPOOL_MAXCONN=1)
    pool = pool_of(app)
    box: list[Outcome] = []
    # A query long enough to be certainly running when the cut comes, busy machine or not.
    running = threading.Thread(target=lambda: box.append(request_within(app, "/sleep/15.0", 20)))
    running.start()
    assert wait_until(lambda: bool(admin.sessions("active")), 10.0)

    proxy.drop()
    proxy.pass_through()
    running.join(25)
    assert not running.is_alive()
    # The view's own connection broke: uncaught, that answers 503 with
    # Retry-After, and the broken connection did not keep the only slot.
    assert box[0].status == 503
    assert box[0].retry_after == "1"
    assert box[0].seconds < 12  # not the 15 s the query asked for
    assert_no_leak(pool)
    assert request_within(app, "/one", LIMIT).status == 200
    assert pool.get_stats()["pool_size"] == 1


def test_blackhole_new_connections_time_out_with_503(proxy: TcpProxy, app_name: str) -> None:
    """A server that never answers: connects are bounded by PGPOOL_CONNECT_TIMEOUT."""
    app = fault_app(proxied(proxy), app_name)
    proxy.blackhole()
    for outcome in hammer(app, "/one", threads=3, per_thread=1, limit=LIMIT):
        assert_clean_503(outcome)
    proxy.pass_through()
    assert recovers(app)
    assert_no_leak(pool_of(app))


def test_blackhole_pooled_connections_with_ping_at_checkout(proxy: TcpProxy, app_name: str) -> None:
    """A silent partition shows nothing on the socket: with PGPOOL_PING_AFTER=0
    every checkout pings, with a bounded wait, so requests get a 503, not a hang."""
    app = fault_app(proxied(proxy), app_name, PGPOOL_PING_AFTER=0)
    assert {o.status for o in hammer(app, "/one", threads=4, per_thread=2, limit=LIMIT)} == {200}
    idle_before = pool_of(app).get_stats()["pool_available"]
    assert idle_before >= 1

    proxy.blackhole()
    for outcome in hammer(app, "/one", threads=4, per_thread=1, limit=LIMIT):
        assert_clean_503(outcome)
    stats = pool_of(app).get_stats()
    assert stats["connections_lost"] >= 1

    proxy.pass_through()
    assert recovers(app)
    assert_no_leak(pool_of(app))


def test_slow_network_still_serves(proxy: TcpProxy, app_name: str) -> None:
    app = fault_app(proxied(proxy), app_name)
    proxy.slow(0.05)  # every round trip takes >= 0.1 s, connects several times that
    outcomes = hammer(app, "/one", threads=4, per_thread=3, limit=LIMIT)
    assert [o.status for o in outcomes] == [200] * 12
    assert min(o.seconds for o in outcomes) >= 0.1
    assert_no_leak(pool_of(app))


def test_connects_slower_than_connect_timeout_give_503(proxy: TcpProxy, app_name: str) -> None:
    app = fault_app(proxied(proxy), app_name)
    proxy.slow(1.5)  # the startup exchange alone takes longer than connect_timeout
    started = time.monotonic()
    for outcome in hammer(app, "/one", threads=2, per_thread=1, limit=LIMIT):
        assert_clean_503(outcome)
    assert time.monotonic() - started < LIMIT
    proxy.slow(0.05)
    assert recovers(app)
    proxy.pass_through()
    assert_no_leak(pool_of(app))


def test_checkout_deadline_bounds_a_hanging_connect(proxy: TcpProxy, app_name: str) -> None:
    """PGPOOL_TIMEOUT bounds the whole checkout, connects included, even when
    PGPOOL_CONNECT_TIMEOUT is longer (up to libpq's 2 s granularity)."""
    app = fault_app(proxied(proxy), app_name, PGPOOL_TIMEOUT=1, PGPOOL_CONNECT_TIMEOUT=10, PGPOOL_PING_AFTER=0)
    assert request_within(app, "/one", LIMIT).status == 200
    proxy.blackhole()  # the pooled connection's ping and every new connect hang
    for outcome in hammer(app, "/one", threads=2, per_thread=2, limit=15):
        assert outcome.status == 503
        # PGPOOL_TIMEOUT plus libpq's 2 s, with room for a busy machine: not the 10 s connect timeout.
        assert outcome.seconds < 8, outcome
    proxy.pass_through()
    assert recovers(app)
    assert_no_leak(pool_of(app))
