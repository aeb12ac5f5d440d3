"""The pool's invariants under a random mix of concurrent checkouts, returns,
server-side kills and resizes (hypothesis stateful testing)."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test
from psycopg2.extensions import connection
from support.poolkit import backend_pid, query_one, terminate

from flask_pgpool import ConnectionPool

pytestmark = pytest.mark.slow


class PoolMachine(RuleBasedStateMachine):
    dsn = ""
    admin: connection

    def __init__(self) -> None:
        super().__init__()
        self.app_name = f"pgpool-state-{uuid.uuid4().hex[:10]}"
        self.pool = ConnectionPool(
            0, 3, self.dsn, timeout=10, ping_after=None, connect_args={"application_name": self.app_name}
        )
        self.held: list[connection] = []
        self.killed: set[int] = set()  # ids of held connections whose backend was terminated

    # -- rules -----------------------------------------------------------

    @rule(count=st.integers(1, 3))
    def checkout(self, count: int) -> None:
        free = self.pool.get_stats()["pool_max"] - len(self.held)
        count = min(count, free)
        if count <= 0:
            return
        with ThreadPoolExecutor(count) as executor:
            got = list(executor.map(lambda _: self.pool.getconn(), range(count), timeout=30))
        ids = {id(conn) for conn in got}
        assert len(ids) == len(got), "one connection handed to two borrowers at once"
        assert not ids & {id(conn) for conn in self.held}, "a connection in use was handed out again"
        for conn in got:
            # Never a dead one, even after kills of idle connections.
            assert query_one(conn, "SELECT 1") == 1
            conn.rollback()
        self.held.extend(got)

    @precondition(lambda self: self.held)
    @rule(data=st.data(), close=st.booleans())
    def checkin(self, data: st.DataObject, close: bool) -> None:
        conn = self.held.pop(data.draw(st.integers(0, len(self.held) - 1)))
        self.killed.discard(id(conn))
        # A killed connection is discarded at return when the return finds it
        # broken, otherwise by the next checkout's socket check: `checkout`
        # asserts that no dead connection is ever handed out.
        self.pool.putconn(conn, close=close)

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def kill_in_use(self, data: st.DataObject) -> None:
        conn = self.held[data.draw(st.integers(0, len(self.held) - 1))]
        if id(conn) not in self.killed:
            terminate(self.admin, backend_pid(conn))
            self.killed.add(id(conn))

    @rule()
    def kill_idle(self) -> None:
        in_use = {backend_pid(conn) for conn in self.held}
        with self.admin.cursor() as cur:
            cur.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s", (self.app_name,))
            idle = [pid for (pid,) in cur.fetchall() if pid not in in_use]
        if idle:
            terminate(self.admin, idle[0])

    @rule(maxconn=st.integers(1, 4), minconn=st.integers(0, 1))
    def resize(self, maxconn: int, minconn: int) -> None:
        self.pool.resize(min(minconn, maxconn), maxconn)

    @rule(threads=st.integers(2, 5), grow=st.integers(1, 2))
    def concurrent_mix(self, threads: int, grow: int) -> None:
        """Threads check out and return while the pool is resized under them."""
        borrowed = {id(conn) for conn in self.held}
        guard = threading.Lock()

        def borrower() -> None:
            for _ in range(4):
                conn = self.pool.getconn(timeout=10)
                with guard:
                    assert id(conn) not in borrowed, "one connection handed to two borrowers at once"
                    borrowed.add(id(conn))
                try:
                    assert query_one(conn, "SELECT 1") == 1
                finally:
                    with guard:
                        borrowed.discard(id(conn))
                    self.pool.putconn(conn)

        with ThreadPoolExecutor(threads) as executor:
            futures = [executor.submit(borrower) for _ in range(threads)]
            # Keep room for the borrowers: never below what this machine holds + 1.
            self.pool.resize(0, len(self.held) + grow)
            self.pool.resize(0, len(self.held) + grow + 1)
            for future in futures:
                future.result(timeout=60)

    @rule()
    def check(self) -> None:
        self.pool.check()

    # -- invariants --------------------------------------------------------

    @invariant()
    def counts_add_up(self) -> None:
        state = self.pool._state
        with state.lock:
            stats = self.pool._snapshot(state)
            opening = state.opening
            in_use = sum(record.in_use for record in state.records.values())
        assert in_use == len(self.held)
        assert stats["pool_size"] == stats["pool_available"] + in_use + opening
        # Above maxconn only while connections checked out before a shrink are still out.
        assert stats["pool_size"] <= max(stats["pool_max"], in_use + opening)
        if stats["pool_available"]:
            assert stats["pool_size"] <= stats["pool_max"]
        assert stats["requests_waiting"] == 0

    def teardown(self) -> None:
        for conn in self.held:
            self.pool.putconn(conn)
        self.pool.closeall()


def test_pool_invariants_hold(pg_dsn: str, admin: connection) -> None:
    class Machine(PoolMachine):
        pass

    Machine.dsn = pg_dsn
    Machine.admin = admin
    run_state_machine_as_test(
        Machine,
        settings=settings(
            max_examples=25,
            stateful_step_count=20,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            database=None,
        ),
    )


