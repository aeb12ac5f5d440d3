"""Connections are opened with a bound on a silent network (TCP keepalives and
tcp_user_timeout, read back from the kernel), which the user's own values
override and ``network_timeout=None`` turns off; the pool's own waits agree
with it. A silent path itself is tested in tests/faults/test_fault_silent_network.py."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from psycopg2.extensions import connection, make_dsn, parse_dsn
from support.netproxy import TcpProxy
from support.poolkit import PoolFactory, query_one, run_in_thread, tcp_settings, via_proxy, wait_until

from flask_pgpool import ConnectionPool
from flask_pgpool._timeouts import keepalive_params

SYSTEM_KEEPALIVE_IDLE = int(Path("/proc/sys/net/ipv4/tcp_keepalive_time").read_text())


@pytest.fixture
def tcp_dsn(pg_dsn: str, proxy: TcpProxy) -> str:
    """The test server over TCP (the session's server may be on a Unix socket)."""
    return via_proxy(pg_dsn, proxy)


@pytest.fixture
def checked_out() -> Iterator[list[tuple[ConnectionPool, connection]]]:
    taken: list[tuple[ConnectionPool, connection]] = []
    yield taken
    for pool, conn in taken:
        pool.putconn(conn)


def settings_of(pool: ConnectionPool, taken: list[tuple[ConnectionPool, connection]]) -> dict[str, int]:
    conn = pool.getconn()
    taken.append((pool, conn))
    assert query_one(conn, "SELECT 1") == 1
    return tcp_settings(conn)


def test_connections_are_bounded_at_30_seconds_by_default(
    make_pool: PoolFactory, tcp_dsn: str, checked_out: list[tuple[ConnectionPool, connection]]
) -> None:
    assert settings_of(make_pool(dsn=tcp_dsn), checked_out) == {
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 4,
        "tcp_user_timeout": 30_000,
    }


def test_network_timeout_sets_the_bound(
    make_pool: PoolFactory, tcp_dsn: str, checked_out: list[tuple[ConnectionPool, connection]]
) -> None:
    assert settings_of(make_pool(dsn=tcp_dsn, network_timeout=6), checked_out) == {
        "keepalives": 1,
        "keepalives_idle": 2,
        "keepalives_interval": 1,
        "keepalives_count": 4,
        "tcp_user_timeout": 6_000,
    }


@pytest.mark.parametrize("off", [None, 0])
def test_network_timeout_off_leaves_the_systems_defaults(
    make_pool: PoolFactory, tcp_dsn: str, checked_out: list[tuple[ConnectionPool, connection]], off: int | None
) -> None:
    found = settings_of(make_pool(dsn=tcp_dsn, network_timeout=off), checked_out)
    assert found["tcp_user_timeout"] == 0  # the kernel's retransmission limit applies
    assert found["keepalives_idle"] == SYSTEM_KEEPALIVE_IDLE


SYSTEM_KEEPALIVE_INTERVAL = int(Path("/proc/sys/net/ipv4/tcp_keepalive_intvl").read_text())
SYSTEM_KEEPALIVE_COUNT = int(Path("/proc/sys/net/ipv4/tcp_keepalive_probes").read_text())


@pytest.mark.parametrize(
    ("in_dsn", "in_args", "expected"),
    [
        ({"keepalives_idle": 60}, {}, {"keepalives_idle": 60}),
        ({}, {"tcp_user_timeout": 12_345}, {"tcp_user_timeout": 12_345}),
        ({"keepalives_idle": 60}, {"keepalives_count": 2}, {"keepalives_idle": 60, "keepalives_count": 2}),
        ({"keepalives": 1}, {}, {}),
    ],
)
def test_any_keepalive_value_of_the_user_leaves_the_whole_bound_to_them(
    make_pool: PoolFactory,
    tcp_dsn: str,
    checked_out: list[tuple[ConnectionPool, connection]],
    in_dsn: dict[str, int],
    in_args: dict[str, int],
    expected: dict[str, int],
) -> None:
    """A mix of the user's values and the pool's would be a bound nobody
    chose: the pool adds none of its own, the system's defaults apply."""
    found = settings_of(make_pool(dsn=make_dsn(tcp_dsn, **in_dsn), connect_args=in_args), checked_out)
    assert found == {
        "keepalives": 1,
        "keepalives_idle": SYSTEM_KEEPALIVE_IDLE,
        "keepalives_interval": SYSTEM_KEEPALIVE_INTERVAL,
        "keepalives_count": SYSTEM_KEEPALIVE_COUNT,
        "tcp_user_timeout": 0,
        **expected,
    }


@pytest.mark.parametrize("named_by", ["dsn", "PGSERVICE", "system file"])
def test_keepalive_values_of_a_connection_service_are_the_users(
    make_pool: PoolFactory,
    tcp_dsn: str,
    checked_out: list[tuple[ConnectionPool, connection]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    named_by: str,
) -> None:
    """libpq reads the service's section of pg_service.conf: a keepalive value
    there is the user's as much as one in the DSN."""
    services = "# the app's services\n[other]\nkeepalives_idle=99\n[app]\nkeepalives_idle=45\n"
    (tmp_path / "pg_service.conf").write_text(services)
    if named_by == "system file":
        # No user file (~/.pg_service.conf): libpq looks in PGSYSCONFDIR.
        monkeypatch.delenv("PGSERVICEFILE", raising=False)
        monkeypatch.setenv("HOME", str(tmp_path / "home"))
        monkeypatch.setenv("PGSYSCONFDIR", str(tmp_path))
    else:
        monkeypatch.setenv("PGSERVICEFILE", str(tmp_path / "pg_service.conf"))
    if named_by == "PGSERVICE":
        monkeypatch.setenv("PGSERVICE", "app")
        dsn = tcp_dsn
    else:
        dsn = make_dsn(tcp_dsn, service="app")
    found = settings_of(make_pool(dsn=dsn), checked_out)
    assert (found["keepalives_idle"], found["keepalives_interval"]) == (45, SYSTEM_KEEPALIVE_INTERVAL)
    assert found["tcp_user_timeout"] == 0


def test_a_service_without_keepalive_values_gets_the_bound(
    make_pool: PoolFactory,
    tcp_dsn: str,
    checked_out: list[tuple[ConnectionPool, connection]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "pg_service.conf").write_text("[app]\nkeepalives_idle=45\n[plain]\nconnect_timeout=7\n")
    monkeypatch.setenv("PGSERVICEFILE", str(tmp_path / "pg_service.conf"))
    found = settings_of(make_pool(dsn=make_dsn(tcp_dsn, service="plain"), network_timeout=6), checked_out)
    assert (found["keepalives_idle"], found["tcp_user_timeout"]) == (2, 6_000)


def test_keepalives_off_in_the_dsn_turns_the_whole_bound_off(
    make_pool: PoolFactory, tcp_dsn: str, checked_out: list[tuple[ConnectionPool, connection]]
) -> None:
    found = settings_of(make_pool(dsn=make_dsn(tcp_dsn, keepalives=0)), checked_out)
    # libpq sets tcp_user_timeout only on a connection with keepalives.
    assert (found["keepalives"], found["tcp_user_timeout"]) == (0, 0)


def test_unix_socket_connections_ignore_the_bound(
    make_pool: PoolFactory, pg_dsn: str, checked_out: list[tuple[ConnectionPool, connection]]
) -> None:
    if not (parse_dsn(pg_dsn).get("host") or "").startswith("/"):
        pytest.skip("the test server is not on a Unix socket")
    pool = make_pool(dsn=pg_dsn, network_timeout=5)
    conn = pool.getconn()
    checked_out.append((pool, conn))
    assert query_one(conn, "SELECT 1") == 1  # libpq applies TCP settings to TCP only


def test_a_ping_on_a_silent_path_gives_up_at_the_network_bound(
    make_pool: PoolFactory, pg_dsn: str, proxy: TcpProxy
) -> None:
    """The pool's own exchanges (here the checkout's ping) wait no longer than
    the network bound, even when timeout and connect_timeout are longer."""
    pool = make_pool(
        0, 1, dsn=via_proxy(pg_dsn, proxy), timeout=20, connect_timeout=20, ping_after=0, network_timeout=2
    )
    pool.putconn(pool.getconn())
    proxy.blackhole()  # the proxy answers nothing, and acknowledges everything
    started = time.monotonic()
    checkout = run_in_thread(pool.getconn, name="checkout-on-a-silent-path")
    wait_until(lambda: pool.get_stats()["connections_lost"] == 1, timeout=10, what="the ping to give up")
    gave_up = time.monotonic() - started
    proxy.pass_through()
    pool.putconn(checkout(25))  # a new connection, once the network works again
    assert gave_up < 4.5, f"the ping waited {gave_up:.1f} s, not the 2 s bound"  # without the bound: 10 s


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0.0004, "1ms"), (0.2, "200ms"), (1.5, "1500ms"), (2, "2s"), (120, "2min"), (7200, "2h"), (172800, "2d")],
)
def test_a_statement_timeout_is_checked_in_force_whatever_its_unit(
    make_pool: PoolFactory,
    pg_server_dsn: str,
    checked_out: list[tuple[ConnectionPool, connection]],
    seconds: float,
    shown: str,
) -> None:
    pool = make_pool(dsn=pg_server_dsn, statement_timeout=seconds)
    conn = pool.getconn()
    checked_out.append((pool, conn))
    assert query_one(conn, "SHOW statement_timeout") == shown


@pytest.mark.parametrize("bound", [1, 2.5, 3, 6, 10, 30, 45.5, 600, 3600, 10**6])
def test_the_keepalive_schedule_gives_up_at_about_the_bound(bound: float) -> None:
    params = keepalive_params(bound)
    assert params["keepalives"] == 1
    assert params["tcp_user_timeout"] == min(round(bound * 1000), 2**31 - 1)
    # Where TCP_USER_TIMEOUT does not exist, the probes alone end the connection
    # after idle + count * interval seconds of silence: about the bound too.
    given_up = params["keepalives_idle"] + params["keepalives_count"] * params["keepalives_interval"]
    if bound <= 32767:
        assert bound <= given_up <= bound + max(1, params["keepalives_interval"])
    assert 1 <= params["keepalives_idle"] <= 32767
    assert 1 <= params["keepalives_interval"] <= 32767
    assert 1 <= params["keepalives_count"] <= 127
