"""A primary and a streaming standby on private clusters, and the moves of a failover.

Typical use::

    with replicated_pair("failover") as pair:
        dsn = pair.dsn()                    # host=...,... port=p1,p2 target_session_attrs=read-write
        pair.fence(pair.primary)            # read-only, sessions kept (as switchover tools do)
        pair.standby.promote()              # the standby takes writes
        pair.rejoin(old, new_primary)       # a stopped old primary follows the new one

Both servers listen on 127.0.0.1 with ports of their own; trust authentication,
role and database ``postgres`` (see :mod:`support.pgcluster`).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg2
from psycopg2.extensions import connection, make_dsn

from .pgcluster import DB_NAME, DB_USER, LISTEN_HOST, PgCluster, PgClusterError

__all__ = ["REPLICATION_SETTINGS", "ReplicatedPair", "replicated_pair"]

#: What a primary needs for pg_basebackup and streaming, and pg_rewind for a rejoin.
REPLICATION_SETTINGS = """
wal_level = replica
max_wal_senders = 10
wal_keep_size = 64MB
hot_standby = on
wal_log_hints = on
full_page_writes = on
"""


def _connect(cluster: PgCluster) -> connection:
    conn: connection = psycopg2.connect(cluster.dsn, connect_timeout=5, application_name="pgpool-test-admin")
    conn.autocommit = True
    return conn


def scalar(cluster: PgCluster, sql: str, args: tuple[Any, ...] = ()) -> Any:
    """One value from ``cluster`` on a short connection of its own."""
    conn = _connect(cluster)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            row = cur.fetchone()
            return row[0] if row else None
    finally:
        conn.close()


def execute(cluster: PgCluster, sql: str, args: tuple[Any, ...] = ()) -> None:
    """Run a statement on ``cluster`` in autocommit, on a short connection of its own."""
    conn = _connect(cluster)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
    finally:
        conn.close()


class ReplicatedPair:
    """Two clusters, the first made a primary and the second its streaming standby.

    ``nodes`` keeps its order whatever their roles become, so DSNs stay the same
    across a failover; :attr:`primary` and :attr:`standby` are looked up on the servers.
    """

    def __init__(self, first: PgCluster, second: PgCluster) -> None:
        self.nodes = (first, second)

    @classmethod
    def create(cls, base_dir: Path) -> ReplicatedPair:
        primary = PgCluster.create(base_dir / "a", settings=REPLICATION_SETTINGS)
        try:
            standby = PgCluster.create_standby(base_dir / "b", primary)
        except BaseException:
            primary.destroy()
            raise
        pair = cls(primary, standby)
        pair.wait_streaming()
        return pair

    # -- connection strings --------------------------------------------------

    def dsn(self, **params: str) -> str:
        """A key=value DSN naming both servers; by default only the read-write one is accepted."""
        params = {"target_session_attrs": "read-write", **params}
        return str(
            make_dsn(
                host=",".join(LISTEN_HOST for _ in self.nodes),
                port=",".join(str(node.port) for node in self.nodes),
                user=params.pop("user", DB_USER),
                dbname=params.pop("dbname", DB_NAME),
                **params,
            )
        )

    def url(self, user: str = DB_USER, password: str | None = None, **params: str) -> str:
        """The same as :meth:`dsn` in the URL form (``postgresql://u@h1:p1,h2:p2/db?...``)."""
        params = {"target_session_attrs": "read-write", **params}
        userinfo = quote(user, safe="") + (":" + quote(password, safe="") if password is not None else "")
        hosts = ",".join(f"{LISTEN_HOST}:{node.port}" for node in self.nodes)
        query = "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())
        return f"postgresql://{userinfo}@{hosts}/{DB_NAME}?{query}"

    # -- roles ---------------------------------------------------------------

    def in_recovery(self, node: PgCluster) -> bool:
        return bool(scalar(node, "SELECT pg_is_in_recovery()"))

    def takes_writes(self, node: PgCluster) -> bool:
        """Not in recovery, and not fenced read-only."""
        return bool(scalar(node, "SELECT current_setting('transaction_read_only')") == "off")

    @property
    def primary(self) -> PgCluster:
        """The running node that takes writes (not a standby, not fenced)."""
        for node in self.nodes:
            if node.is_running() and self.takes_writes(node):
                return node
        raise PgClusterError("no running node takes writes")

    @property
    def standby(self) -> PgCluster:
        """The running node in recovery."""
        for node in self.nodes:
            if node.is_running() and self.in_recovery(node):
                return node
        raise PgClusterError("no standby is running")

    # -- the moves of a failover ---------------------------------------------

    def fence(self, node: PgCluster) -> None:
        """Make ``node`` refuse writes while it stays up with its sessions, as switchover tools do.

        Returns once the server has taken the change in, and so has signalled
        every session (each applies it before its next command).
        """
        execute(node, "ALTER SYSTEM SET default_transaction_read_only = on")
        execute(node, "SELECT pg_reload_conf()")
        self._wait_read_only(node, "on")

    def unfence(self, node: PgCluster) -> None:
        execute(node, "ALTER SYSTEM RESET default_transaction_read_only")
        execute(node, "SELECT pg_reload_conf()")
        self._wait_read_only(node, "off")

    def _wait_read_only(self, node: PgCluster, value: str, timeout: float = 10.0) -> None:
        # pg_reload_conf() only signals the postmaster; it reloads, then signals the
        # sessions. A new session shows when the postmaster has reloaded.
        deadline = time.monotonic() + timeout
        while scalar(node, "SHOW default_transaction_read_only") != value:
            if time.monotonic() > deadline:
                raise PgClusterError(f"default_transaction_read_only is not {value} after {timeout} s")
            time.sleep(0.01)

    def rejoin(self, node: PgCluster, upstream: PgCluster, timeout: float = 60.0) -> None:
        """Start the stopped ``node`` again as a standby of ``upstream`` (rewound if it had diverged)."""
        if node.is_running():
            node.stop("fast")
        self.unfence_stopped(node)
        # -R writes standby.signal and primary_conninfo, also when no rewind is needed.
        node._run(
            "pg_rewind",
            "-D",
            str(node.data_dir),
            "--source-server",
            f"{upstream.dsn} connect_timeout=5",
            "-R",
            "--no-sync",
            timeout=timeout,
        )
        node.start(timeout)
        self.wait_streaming(timeout=timeout)

    def unfence_stopped(self, node: PgCluster) -> None:
        """Drop a fence from the configuration of a stopped node (it must take writes when promoted)."""
        auto = node.data_dir / "postgresql.auto.conf"
        if auto.exists():
            lines = auto.read_text().splitlines(keepends=True)
            auto.write_text("".join(line for line in lines if "default_transaction_read_only" not in line))

    def wait_streaming(self, timeout: float = 30.0) -> None:
        """Wait until the primary has a streaming standby."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(psycopg2.Error, PgClusterError):
                if scalar(self.primary, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'"):
                    return
            if time.monotonic() > deadline:
                raise PgClusterError(f"no standby streaming after {timeout} s")
            time.sleep(0.05)

    def wait_replayed(self, upstream: PgCluster | None = None, timeout: float = 30.0) -> None:
        """Wait until the standby has replayed all ``upstream`` (default: the primary) has written."""
        lsn = scalar(upstream or self.primary, "SELECT pg_current_wal_lsn()")
        standby = self.standby
        deadline = time.monotonic() + timeout
        while not scalar(standby, "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)):
            if time.monotonic() > deadline:
                raise PgClusterError(f"standby did not replay up to {lsn} within {timeout} s")
            time.sleep(0.02)

    def destroy(self) -> None:
        for node in self.nodes:
            node.destroy()


@contextlib.contextmanager
def replicated_pair(prefix: str = "pair") -> Iterator[ReplicatedPair]:
    """A ReplicatedPair in a directory of its own directly under the system temp dir (see private_cluster)."""
    base = Path(tempfile.mkdtemp(prefix=f"pgpool-{prefix}-"))
    try:
        pair = ReplicatedPair.create(base)
        try:
            yield pair
        finally:
            pair.destroy()
    finally:
        shutil.rmtree(base, ignore_errors=True)
