"""Tests for the fault-test infrastructure itself: PgCluster and TcpProxy.

These run against a private PgCluster (never the machine's PostgreSQL on 5432).
Every connect has a connect_timeout and every query that may hang runs in a
thread joined with a timeout, so no test can take more than a few seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions
import pytest
from support.netproxy import TcpProxy
from support.pgcluster import PgCluster

Connect = Callable[..., psycopg2.extensions.connection]

CONNECT_TIMEOUT = 3  # seconds; libpq's minimum effective value is 2


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgCluster]:
    """One cluster for the whole module (initdb costs ~1 s)."""
    with PgCluster.create(tmp_path_factory.mktemp("pgcluster")) as pg_cluster:
        yield pg_cluster


@pytest.fixture
def pg(cluster: PgCluster) -> Iterator[PgCluster]:
    """The module's cluster, running at the start and again after the test."""
    cluster.start()
    yield cluster
    cluster.start()


@pytest.fixture
def connect() -> Iterator[Connect]:
    """psycopg2.connect with a connect timeout; closes every connection afterwards."""
    opened: list[psycopg2.extensions.connection] = []

    def _connect(dsn: str, **kwargs: Any) -> psycopg2.extensions.connection:
        kwargs.setdefault("connect_timeout", CONNECT_TIMEOUT)
        conn: psycopg2.extensions.connection = psycopg2.connect(dsn, **kwargs)
        conn.autocommit = True
        opened.append(conn)
        return conn

    yield _connect
    for conn in opened:
        conn.close()


@pytest.fixture
def proxy(pg: PgCluster) -> Iterator[TcpProxy]:
    """A TcpProxy in front of the cluster's TCP port."""
    with TcpProxy((pg.host, pg.port)) as tcp_proxy:
        yield tcp_proxy


def proxied_dsn(proxy: TcpProxy) -> str:
    return proxy.dsn(user="postgres", dbname="postgres")


def execute(conn: psycopg2.extensions.connection, sql: str) -> None:
    with conn.cursor() as cur:
        cur.execute(sql)


def scalar(conn: psycopg2.extensions.connection, sql: str) -> Any:
    with conn.cursor() as cur:
        cur.execute(sql)
        row = cur.fetchone()
        assert row is not None
        return row[0]


class QueryThread(threading.Thread):
    """Runs one query in the background and records its outcome."""

    def __init__(self, conn: psycopg2.extensions.connection, sql: str = "SELECT 1") -> None:
        super().__init__(daemon=True)
        self.conn = conn
        self.sql = sql
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = scalar(self.conn, self.sql)
        except BaseException as exc:
            self.error = exc


def backend_alive(pg_conn: psycopg2.extensions.connection, pid: int) -> bool:
    return bool(scalar(pg_conn, f"SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}"))


def wait_until(predicate: Callable[[], bool], timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


# ---------------------------------------------------------------- PgCluster


def test_cluster_accepts_tcp_and_socket(pg: PgCluster, connect: Connect) -> None:
    assert pg.port != 5432
    assert pg.is_running()
    assert pg.dsn == f"host=127.0.0.1 port={pg.port} user=postgres dbname=postgres"
    assert len(str(pg.socket_path)) < 100

    tcp = connect(pg.dsn)
    assert scalar(tcp, "SELECT inet_server_port()") == pg.port
    assert scalar(tcp, "SELECT current_setting('fsync')") == "off"
    assert scalar(tcp, "SELECT current_setting('max_connections')") == "100"
    assert scalar(tcp, "SELECT current_user") == "postgres"

    unix = connect(pg.socket_dsn)
    assert scalar(unix, "SELECT inet_server_addr()") is None  # not TCP
    unix2 = connect("", host=str(pg.socket_dir), port=pg.port, user="postgres", dbname="postgres")
    assert scalar(unix2, "SELECT 1") == 1
    assert pg.log_file.is_file()


def test_stop_then_start_keeps_port(pg: PgCluster, connect: Connect) -> None:
    port = pg.port
    pg.stop()
    assert not pg.is_running()
    started = time.monotonic()
    with pytest.raises(psycopg2.OperationalError):
        connect(pg.dsn)
    assert time.monotonic() - started < 1.0  # refused at once, not a timeout
    with pytest.raises(psycopg2.OperationalError):
        connect(pg.socket_dsn)

    pg.start()
    assert pg.is_running()
    assert pg.port == port
    assert scalar(connect(pg.dsn), "SELECT inet_server_port()") == port
    assert scalar(connect(pg.socket_dsn), "SELECT 1") == 1


def test_stop_is_idempotent_and_immediate_mode_recovers(pg: PgCluster, connect: Connect) -> None:
    conn = connect(pg.dsn)
    execute(conn, "DROP TABLE IF EXISTS t_recover")
    execute(conn, "CREATE TABLE t_recover (x int)")
    execute(conn, "INSERT INTO t_recover VALUES (1)")
    pg.stop(mode="immediate")  # like a crash: next start runs crash recovery
    pg.stop()  # no-op when stopped
    assert not pg.is_running()
    pg.start()
    pg.start()  # no-op when running
    assert scalar(connect(pg.dsn), "SELECT count(*) FROM t_recover") == 1  # commit survived


def test_restart_kills_open_connection(pg: PgCluster, connect: Connect) -> None:
    conn = connect(pg.dsn)
    old_pid = scalar(conn, "SELECT pg_backend_pid()")
    pg.restart()
    with pytest.raises(psycopg2.OperationalError):
        scalar(conn, "SELECT 1")
    assert conn.closed  # psycopg2 marks the broken connection closed

    fresh = connect(pg.dsn)
    assert scalar(fresh, "SELECT pg_backend_pid()") != old_pid


def test_destroy_removes_everything(tmp_path: Path, connect: Connect) -> None:
    with PgCluster.create(tmp_path / "own") as own:
        assert scalar(connect(own.dsn), "SELECT 1") == 1
        data_dir, socket_dir = own.data_dir, own.socket_dir
    assert not own.is_running()
    assert not data_dir.exists()
    assert not socket_dir.exists()
    own.destroy()  # idempotent
    with pytest.raises(psycopg2.OperationalError):
        connect(own.dsn)


# ---------------------------------------------------------------- TcpProxy


@pytest.mark.parametrize("via", ["tcp", "unix"])
def test_proxy_passes_queries_through(pg: PgCluster, connect: Connect, via: str) -> None:
    target: tuple[str, int] | Path = (pg.host, pg.port) if via == "tcp" else pg.socket_path
    with TcpProxy(target) as proxy:
        assert proxy.mode == "pass"
        conn = connect(proxied_dsn(proxy))
        assert scalar(conn, "SELECT 41 + 1") == 42
        # A large result crosses many chunks and needs backpressure handling.
        assert len(scalar(conn, "SELECT repeat('x', 3000000)")) == 3_000_000
        assert proxy.accepted == 1
        assert proxy.active_connections == 1
        conn.close()
        assert wait_until(lambda: proxy.active_connections == 0)


def test_proxy_dsn_quotes_values(proxy: TcpProxy, connect: Connect) -> None:
    dsn = proxy.dsn(user="postgres", dbname="postgres", options="-c statement_timeout=1234")
    assert dsn == (
        f"host=127.0.0.1 port={proxy.port} user=postgres dbname=postgres options='-c statement_timeout=1234'"
    )
    assert scalar(connect(dsn), "SHOW statement_timeout") == "1234ms"


def test_proxy_passes_server_restart_on(pg: PgCluster, proxy: TcpProxy, connect: Connect) -> None:
    conn = connect(proxied_dsn(proxy))
    assert scalar(conn, "SELECT 1") == 1
    pg.restart()
    with pytest.raises(psycopg2.OperationalError):
        scalar(conn, "SELECT 1")
    assert wait_until(lambda: proxy.active_connections == 0)
    assert scalar(connect(proxied_dsn(proxy)), "SELECT 1") == 1


def test_proxy_drop_fails_open_connection_quickly(pg: PgCluster, proxy: TcpProxy, connect: Connect) -> None:
    direct = connect(pg.dsn)
    conn = connect(proxied_dsn(proxy))
    backend_pid = scalar(conn, "SELECT pg_backend_pid()")

    proxy.drop()
    started = time.monotonic()
    with pytest.raises(psycopg2.OperationalError):
        scalar(conn, "SELECT 1")
    assert time.monotonic() - started < 1.0
    # The server side was reset too: its backend goes away.
    assert wait_until(lambda: not backend_alive(direct, backend_pid))

    # New connections are refused while dropping ...
    started = time.monotonic()
    with pytest.raises(psycopg2.OperationalError):
        connect(proxied_dsn(proxy))
    assert time.monotonic() - started < 1.0
    # ... and work again after pass_through().
    proxy.pass_through()
    assert scalar(connect(proxied_dsn(proxy)), "SELECT 1") == 1


def test_proxy_blackhole_hangs_query_until_dropped(proxy: TcpProxy, connect: Connect) -> None:
    conn = connect(proxied_dsn(proxy))
    assert scalar(conn, "SELECT 1") == 1

    proxy.blackhole()
    query = QueryThread(conn)
    query.start()
    query.join(1.0)
    assert query.is_alive(), "query completed through a blackholed proxy"

    proxy.drop()  # release it
    query.join(3.0)
    assert not query.is_alive()
    assert isinstance(query.error, psycopg2.OperationalError)


def test_proxy_blackhole_holds_data_until_pass_through(proxy: TcpProxy, connect: Connect) -> None:
    conn = connect(proxied_dsn(proxy))
    proxy.blackhole()
    query = QueryThread(conn, "SELECT 7")
    query.start()
    query.join(0.5)
    assert query.is_alive()

    proxy.pass_through()  # the partition heals: held bytes are delivered
    query.join(3.0)
    assert not query.is_alive()
    assert query.error is None
    assert query.result == 7


def test_proxy_blackhole_new_connection_times_out(proxy: TcpProxy, connect: Connect) -> None:
    proxy.blackhole()
    started = time.monotonic()
    with pytest.raises(psycopg2.OperationalError):
        connect(proxied_dsn(proxy), connect_timeout=2)
    assert time.monotonic() - started >= 1.5  # hung until libpq's timeout
    assert proxy.accepted == 1


def test_proxy_slow_delays_round_trip(proxy: TcpProxy, connect: Connect) -> None:
    delay = 0.25
    conn = connect(proxied_dsn(proxy))
    proxy.slow(delay)
    assert proxy.mode == "slow"
    started = time.monotonic()
    assert scalar(conn, "SELECT 1") == 1
    # Each direction is delayed, so a request/response takes at least 2 * delay.
    assert time.monotonic() - started >= 2 * delay

    proxy.pass_through()
    started = time.monotonic()
    assert scalar(conn, "SELECT 1") == 1
    assert time.monotonic() - started < delay


def test_proxy_to_stopped_server_fails_fast(pg: PgCluster, proxy: TcpProxy, connect: Connect) -> None:
    pg.stop()
    started = time.monotonic()
    with pytest.raises(psycopg2.OperationalError):
        connect(proxied_dsn(proxy))
    assert time.monotonic() - started < 1.0
    pg.start()
    assert scalar(connect(proxied_dsn(proxy)), "SELECT 1") == 1


def test_proxy_close_is_bounded_and_leaks_no_threads(pg: PgCluster, connect: Connect) -> None:
    threads_before = set(threading.enumerate())
    proxy = TcpProxy((pg.host, pg.port))
    conn = connect(proxied_dsn(proxy))
    proxy.blackhole()
    query = QueryThread(conn)
    query.start()
    query.join(0.3)
    assert query.is_alive()

    started = time.monotonic()
    proxy.close()
    assert time.monotonic() - started < 2.5
    proxy.close()  # idempotent
    query.join(3.0)  # closing the proxy reset the client socket
    assert not query.is_alive()
    assert isinstance(query.error, psycopg2.OperationalError)
    assert set(threading.enumerate()) <= threads_before
    with pytest.raises(RuntimeError):
        proxy.pass_through()
