"""Tests of support.replication: a primary and a streaming standby, and the moves of a failover.

Also what the failover handling of the pool is built on, measured on a real
server: a session of a server fenced read-only sees nothing while it is idle,
and the parameter change arrives with its next query.
"""

from __future__ import annotations

import select
import uuid
from collections.abc import Iterator

import psycopg2
import pytest
from psycopg2.extensions import connection
from support.replication import ReplicatedPair, execute, replicated_pair, scalar

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shared_pair() -> Iterator[ReplicatedPair]:
    """A pair the tests of this module leave as they found it (no promotion)."""
    with replicated_pair("replication") as pair:
        yield pair


def connect(dsn: str) -> connection:
    conn: connection = psycopg2.connect(dsn, connect_timeout=5)
    return conn


def reported(conn: connection) -> tuple[str | None, str | None]:
    """(default_transaction_read_only, in_hot_standby) as the server last reported them (no round trip)."""
    return conn.info.parameter_status("default_transaction_read_only"), conn.info.parameter_status("in_hot_standby")


def test_standby_replays_the_primary_and_refuses_writes(shared_pair: ReplicatedPair) -> None:
    primary, standby = shared_pair.nodes
    table = f"r_{uuid.uuid4().hex[:8]}"
    execute(primary, f"CREATE TABLE {table} AS SELECT 42 AS answer")
    shared_pair.wait_replayed()
    assert shared_pair.primary is primary and shared_pair.standby is standby
    assert scalar(standby, f"SELECT answer FROM {table}") == 42
    conn = connect(standby.dsn)
    try:
        assert reported(conn) == ("off", "on")
        with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction), conn.cursor() as cur:
            cur.execute(f"INSERT INTO {table} VALUES (1)")
    finally:
        conn.close()


def test_fenced_session_learns_it_with_its_next_query(shared_pair: ReplicatedPair) -> None:
    primary = shared_pair.primary
    table = f"f_{uuid.uuid4().hex[:8]}"
    execute(primary, f"CREATE TABLE {table} (n int)")
    idle, writer, in_transaction = (connect(primary.dsn) for _ in range(3))
    try:
        with in_transaction.cursor() as cur:
            cur.execute(f"INSERT INTO {table} VALUES (1)")  # begun before the fence
        shared_pair.fence(primary)
        # A new session starts read-only and says so at once.
        fresh = connect(primary.dsn)
        assert reported(fresh) == ("on", "off")
        fresh.close()
        # An idle session: nothing on its socket, nothing reported...
        poller = select.poll()
        poller.register(idle.fileno(), select.POLLIN)
        assert poller.poll(200) == []
        assert reported(idle) == ("off", "off")
        # ... until its next query, which already runs read-only.
        with idle.cursor() as cur:
            cur.execute("SELECT current_setting('transaction_read_only')")
            assert cur.fetchone() == ("on",)
        assert reported(idle) == ("on", "off")
        # A write is refused, and the refusal brings the change with it.
        with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction), writer.cursor() as cur:
            cur.execute(f"INSERT INTO {table} VALUES (2)")
        assert reported(writer) == ("on", "off")
        # A transaction begun before the fence still commits its write.
        in_transaction.commit()
        assert scalar(primary, f"SELECT array_agg(n) FROM {table}") == [1]
    finally:
        shared_pair.unfence(primary)
        for conn in (idle, writer, in_transaction):
            conn.close()
    assert shared_pair.takes_writes(primary)


def test_multi_host_dsn_promotion_and_rejoin() -> None:
    with replicated_pair("promotion") as pair:
        first, second = pair.nodes
        for dsn in (pair.dsn(), pair.url()):
            conn = connect(dsn)
            assert conn.info.port == first.port
            conn.close()
        execute(first, "CREATE TABLE moved (n int)")
        first.stop("fast")
        # Only a standby left: libpq accepts no server for a read-write session.
        with pytest.raises(psycopg2.OperationalError, match="read-only"):
            connect(pair.dsn())
        second.promote()
        assert pair.primary is second
        conn = connect(pair.dsn())
        assert conn.info.port == second.port
        conn.close()
        execute(second, "INSERT INTO moved VALUES (7)")
        pair.rejoin(first, second)
        assert pair.standby is first
        pair.wait_replayed()
        assert scalar(first, "SELECT n FROM moved") == 7
        # The old primary, now a standby, is skipped by a read-write DSN.
        conn = connect(pair.dsn())
        assert conn.info.port == second.port
        conn.close()
