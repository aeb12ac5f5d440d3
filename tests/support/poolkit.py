"""Helpers for the pool engine's tests: pools that close after the test, backend
pids, server-side kills, proxies in front of the test server, bounded waits."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
from psycopg2.extensions import connection, make_dsn, parse_dsn

from flask_pgpool import ConnectionPool

from .netproxy import TcpProxy
from .userconfigs import DEFAULT, KeyedPool, SecondRole, UserConfig, as_role, first_value

T = TypeVar("T")


def backend_pid(conn: connection) -> int:
    """The server process of a connection, read client-side (no round trip)."""
    return int(conn.info.backend_pid)


def terminate(admin: connection, *pids: int) -> None:
    """End server sessions and wait until the server has let them go."""
    with admin.cursor() as cur:
        for pid in pids:
            cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
    wait_until(lambda: not _alive(admin, pids), timeout=10, what=f"backends {pids} to exit")


def _alive(admin: connection, pids: tuple[int, ...]) -> bool:
    with admin.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (list(pids),))
        row = cur.fetchone()
        return bool(row and row[0])


def wait_until(predicate: Callable[[], object], *, timeout: float, what: str, interval: float = 0.02) -> None:
    """Poll ``predicate`` until true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def query_one(conn: connection, sql: str, args: tuple[Any, ...] = ()) -> Any:
    """The first column of the first row, through the connection's own cursor (whatever its rows are)."""
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return first_value(cur.fetchone())


def upstream_of(dsn: str) -> tuple[str, int] | str:
    """Where a proxy must forward to reach ``dsn``'s server: (host, port) or a socket path."""
    params = parse_dsn(dsn)
    host = params.get("host") or "/tmp"
    port = int(params.get("port") or 5432)
    if host.startswith("/"):
        return os.path.join(host, f".s.PGSQL.{port}")
    return (host, port)


def via_proxy(dsn: str, proxy: TcpProxy) -> str:
    """``dsn`` with its host and port replaced by the proxy's."""
    params = dict(parse_dsn(dsn))
    params.update(host=proxy.host, port=str(proxy.port))
    params.pop("hostaddr", None)
    return str(make_dsn(**params))


def run_in_thread(target: Callable[[], T], *, name: str = "test-worker") -> Callable[[float], T]:
    """Start ``target`` in a daemon thread; return a function that waits for its result."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = target()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()

    def result(timeout: float) -> T:
        thread.join(timeout)
        if thread.is_alive():
            pytest.fail(f"{name} did not finish within {timeout} s")
        if "error" in box:
            raise box["error"]
        return box["result"]  # type: ignore[no-any-return]

    return result


class PoolFactory:
    """Makes ConnectionPools tagged with the test's application_name; closes them all.

    ``user_config`` (see support.userconfigs) adds the connect arguments, setup,
    login role and keyed checkouts of one way users configure their pools.
    """

    def __init__(
        self, dsn: str, app_name: str, user_config: UserConfig = DEFAULT, role: SecondRole | None = None
    ) -> None:
        self.dsn = dsn
        self.app_name = app_name
        self.user_config = user_config
        self.role = role
        self.made: list[ConnectionPool] = []

    def __call__(self, minconn: int = 0, maxconn: int = 4, dsn: str | None = None, **options: Any) -> ConnectionPool:
        options.setdefault("timeout", 5)
        config = self.user_config
        connect_args = {**config.connect_args, **options.pop("connect_args", {})}
        connect_args.setdefault("application_name", self.app_name)
        if config != DEFAULT:
            options["configure"] = config.then(options.get("configure"))
        dsn = dsn or self.dsn
        if self.role is not None:
            dsn = as_role(dsn, self.role)
        kind = KeyedPool if config.keyed else ConnectionPool
        pool = kind(minconn, maxconn, dsn, connect_args=connect_args, **options)
        self.made.append(pool)
        return pool

    def close(self) -> None:
        for pool in self.made:
            pool.closeall()


@pytest.fixture
def make_pool(
    pg_dsn: str, app_name: str, user_config: UserConfig, request: pytest.FixtureRequest
) -> Iterator[PoolFactory]:
    """``make_pool(minconn, maxconn, **options)``: pools on the test server, closed after the test.

    Built with the test's ``user_config`` (the default one unless the module runs the matrix).
    """
    role = request.getfixturevalue("matrix_role") if user_config.own_role else None
    factory = PoolFactory(pg_dsn, app_name, user_config, role)
    yield factory
    factory.close()


@pytest.fixture
def proxy(pg_dsn: str) -> Iterator[TcpProxy]:
    """A TcpProxy in front of the session's server (``via_proxy(pg_dsn, proxy)`` is its DSN)."""
    with TcpProxy(upstream_of(pg_dsn)) as tcp_proxy:
        yield tcp_proxy


def tcp_settings(conn: connection) -> dict[str, int]:
    """What the kernel holds for the connection's socket."""
    sock = socket.socket(fileno=os.dup(conn.fileno()))
    try:
        return {
            "keepalives": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            "keepalives_idle": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
            "keepalives_interval": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
            "keepalives_count": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
            "tcp_user_timeout": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
        }
    finally:
        sock.close()
