"""Behaviour 7: no slot ever leaks, counts never drift, misuse gets a clear error."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import psycopg2
import psycopg2.pool
import pytest
from psycopg2.extensions import connection
from support.poolkit import PoolFactory, backend_pid, query_one, terminate

from flask_pgpool import ConnectionPool, PoolTimeout

# Run under each user configuration of PGPOOL_TEST_MATRIX (see support.userconfigs).
pytestmark = pytest.mark.user_configs


class FaultyConnection(connection):
    """A real connection whose rollback can be made to fail on demand."""

    fail_with: BaseException | None = None

    def rollback(self) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        super().rollback()


def _faulty(make_pool: PoolFactory, maxconn: int = 1, **options: Any) -> ConnectionPool:
    return make_pool(0, maxconn, connect_args={"connection_factory": FaultyConnection}, timeout=2, **options)


def open_transaction(conn: connection) -> None:
    """Leave a transaction open, as a view does; in autocommit with an explicit BEGIN."""
    with conn.cursor() as cur:
        cur.execute("BEGIN" if conn.autocommit else "SELECT 1")
    assert conn.info.transaction_status == psycopg2.extensions.TRANSACTION_STATUS_INTRANS


def _assert_free(pool: ConnectionPool) -> None:
    """The pool's single slot can be checked out again at once."""
    conn = pool.getconn(timeout=2)
    assert query_one(conn, "SELECT 1") == 1
    pool.putconn(conn)


def test_failing_rollback_on_return_frees_the_slot(make_pool: PoolFactory) -> None:
    pool = _faulty(make_pool)
    conn = cast(FaultyConnection, pool.getconn())
    open_transaction(conn)
    conn.fail_with = psycopg2.OperationalError("rollback failed")
    pool.putconn(conn)
    assert conn.closed
    stats = pool.get_stats()
    assert stats["returns_bad"] == 1
    assert stats["pool_size"] == 0
    _assert_free(pool)


def test_exception_escaping_putconn_still_frees_the_slot(make_pool: PoolFactory) -> None:
    pool = _faulty(make_pool)
    conn = cast(FaultyConnection, pool.getconn())
    open_transaction(conn)
    conn.fail_with = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        pool.putconn(conn)
    assert pool.get_stats()["pool_size"] == 0
    _assert_free(pool)


@pytest.mark.no_pgbouncer  # kills or configures the server session itself
def test_connection_dead_on_return_inside_a_transaction(make_pool: PoolFactory, admin: connection) -> None:
    pool = make_pool(0, 1, timeout=2)
    conn = pool.getconn()
    open_transaction(conn)
    terminate(admin, backend_pid(conn))
    pool.putconn(conn)  # the rollback fails: no exception, slot freed
    assert pool.get_stats()["returns_bad"] == 1
    _assert_free(pool)


def test_open_transaction_is_rolled_back_on_return(make_pool: PoolFactory) -> None:
    pool = make_pool(0, 1)
    conn = pool.getconn()
    open_transaction(conn)
    query_one(conn, "SELECT txid_current()")
    pool.putconn(conn)
    assert pool.getconn() is conn
    assert conn.info.transaction_status == psycopg2.extensions.TRANSACTION_STATUS_IDLE
    pool.putconn(conn)
    assert pool.get_stats()["returns_bad"] == 0


def test_session_settings_are_restored_on_return(make_pool: PoolFactory) -> None:
    pool = make_pool(0, 1)
    conn = pool.getconn()
    # As the connection was opened (the app's configure may have turned autocommit on).
    opened = (conn.autocommit, conn.readonly)
    conn.autocommit = not opened[0]
    conn.set_session(readonly=True)
    pool.putconn(conn)
    again = pool.getconn()
    assert again is conn
    assert (again.autocommit, again.readonly) == opened
    pool.putconn(again)


def test_double_putconn_raises_a_clear_error(make_pool: PoolFactory) -> None:
    pool = make_pool(0, 2)
    conn = pool.getconn()
    pool.putconn(conn)
    with pytest.raises(psycopg2.pool.PoolError, match="not checked out from this pool"):
        pool.putconn(conn)
    stats = pool.get_stats()
    assert stats["pool_size"] == stats["pool_available"] == 1


def test_foreign_connection_raises_a_clear_error(make_pool: PoolFactory, pg_dsn: str) -> None:
    pool = make_pool(0, 2)
    other = make_pool(0, 2)
    theirs = other.getconn()
    stranger = psycopg2.connect(pg_dsn)
    try:
        for conn in (theirs, stranger):
            with pytest.raises(psycopg2.pool.PoolError, match="not checked out from this pool"):
                pool.putconn(conn)
            assert not conn.closed  # not ours to close
        with pytest.raises(psycopg2.pool.PoolError, match="needs a connection"):
            pool.putconn()
    finally:
        stranger.close()
        other.putconn(theirs)
    assert pool.get_stats()["pool_size"] == 0


@pytest.mark.parametrize(("minconn", "maxconn"), [(5, 4), (-1, 4), (0, 0), (1.5, 4), (True, 4)])
def test_bad_sizes_are_refused(pg_dsn: str, minconn: Any, maxconn: Any) -> None:
    with pytest.raises(ValueError, match=r"minconn|maxconn"):
        ConnectionPool(minconn, maxconn, pg_dsn)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("dsn", None),
        ("dsn", b"dbname=test"),
        ("name", ""),
        ("name", None),
        ("health_check", "no"),
        ("health_check", None),
        ("read_only", "false"),
        ("read_only", 1),
        ("configure", 5),
        ("connect_args", 5),
        ("connect_args", ["application_name"]),
        ("connect_args", {1: 2}),
        ("reset", 5),
        ("reset", " "),
        ("label", "PGPOOL_"),
        # Callables that cannot take what the pool gives them.
        ("dsn", lambda prefix: prefix),
        ("configure", lambda: None),
        ("connect_args", lambda conn: {}),
        ("connect_args", {"dsn": "dbname=test"}),
        ("reset", lambda: None),
        ("label", lambda: "x"),
    ],
)
def test_options_of_the_wrong_kind_are_refused_naming_the_option(pg_dsn: str, option: str, value: Any) -> None:
    # Else a DSN or a configure of the wrong type fails only at the first
    # connect, looking like the database being down, and a wrong reset closes
    # every returned connection.
    options: dict[str, Any] = {"dsn": pg_dsn, option: value}
    with pytest.raises(ValueError, match=rf"^{option} must be .*, got ") as refused:
        ConnectionPool(1, 2, **options)
    if option not in ("dsn", "connect_args"):  # those two may hold a password: their values are not quoted
        assert str(refused.value).endswith(f"got {value!r}")


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("dsn", b"postgresql://app:s3cret-pw@db/app"),
        ("connect_args", {"password": "s3cret-pw", "dsn": "dbname=app"}),
        ("connect_args", {"password": "s3cret-pw", 1: 2}),
    ],
)
def test_refused_dsn_and_arguments_never_show_the_password(pg_dsn: str, option: str, value: Any) -> None:
    options: dict[str, Any] = {"dsn": pg_dsn, option: value}
    with pytest.raises(ValueError, match=rf"^{option} must be ") as refused:
        ConnectionPool(1, 2, **options)
    assert "s3cret" not in str(refused.value)


def test_options_of_every_accepted_kind_make_a_pool(pg_dsn: str) -> None:
    pools = [
        ConnectionPool(1, 2, pg_dsn, read_only=True, health_check=False, reset="DISCARD ALL", name="a"),
        ConnectionPool(1, 2, lambda: pg_dsn, connect_args={"application_name": "x"}, configure=lambda conn: None),
        ConnectionPool(1, 2, pg_dsn, connect_args=lambda: {"application_name": "y"}, reset=print, label=str.upper),
    ]
    assert [pool.read_only for pool in pools] == [True, False, False]
    for pool in pools:
        pool.closeall()


def test_resize_refuses_minconn_above_maxconn(make_pool: PoolFactory) -> None:
    pool = make_pool(1, 4)
    with pytest.raises(ValueError, match="must not be greater"):
        pool.resize(5, 4)
    assert pool.get_stats()["pool_min"] == 1 and pool.get_stats()["pool_max"] == 4


def test_failing_configure_leaks_no_slot(make_pool: PoolFactory) -> None:
    calls = []

    def configure(conn: connection) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("setup failed")

    pool = make_pool(0, 1, configure=configure, timeout=5)
    conn = pool.getconn()  # the first connect fails, the retry after the backoff works
    assert len(calls) == 2
    pool.putconn(conn)
    stats = pool.get_stats()
    assert stats["connections_errors"] == 1
    assert stats["pool_size"] == 1


def test_counts_never_drift_under_a_messy_workload(make_pool: PoolFactory, admin: connection) -> None:
    pool = make_pool(1, 4, timeout=0.5)
    rng = random.Random(7)
    sizes: list[tuple[int, int]] = []

    def request(i: int) -> str:
        try:
            conn = pool.getconn()
        except PoolTimeout:
            return "timeout"
        try:
            action = rng.random()
            if action < 0.2:
                query_one(conn, "SELECT 1/0")
            elif action < 0.3:
                terminate(admin, backend_pid(conn))
            else:
                query_one(conn, "SELECT 1 FROM pg_sleep(0.01)")
        except psycopg2.Error:
            pass
        finally:
            pool.putconn(conn, close=action > 0.95)
            stats = pool.get_stats()
            sizes.append((stats["pool_size"], stats["pool_max"]))
        return "ok"

    with ThreadPoolExecutor(8) as executor:
        outcomes = list(executor.map(request, range(120), timeout=120))
    assert outcomes.count("ok") > 60
    assert all(size <= maxconn for size, maxconn in sizes)
    stats = pool.get_stats()
    assert stats["pool_size"] == stats["pool_available"] <= 4
    assert stats["requests_waiting"] == 0
    assert stats["requests_num"] == 120
    assert stats["requests_errors"] == outcomes.count("timeout")
    # Every slot still works.
    conns = [pool.getconn(timeout=5) for _ in range(4)]
    for conn in conns:
        assert query_one(conn, "SELECT 1") == 1
        pool.putconn(conn)


class Interrupted(BaseException):
    """Stands for KeyboardInterrupt, SystemExit or a timeout raised in a waiting thread."""


def test_interrupted_checkout_gives_up_its_place(make_pool: PoolFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    pool = make_pool(0, 1)
    holder = pool.getconn()

    def interrupt(*args: Any) -> float:
        raise Interrupted

    monkeypatch.setattr("flask_pgpool._checkout.wait_time", interrupt)
    with pytest.raises(Interrupted):
        pool.getconn()
    monkeypatch.undo()
    assert pool.get_stats()["requests_waiting"] == 0
    pool.putconn(holder)
    # The connection is idle, not handed to a checkout that is gone.
    assert pool.get_stats()["pool_available"] == 1
    assert pool.getconn(timeout=1) is holder
    pool.putconn(holder)
