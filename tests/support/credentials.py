"""Roles that must log in with a password (scram-sha-256 or md5) on a private cluster, and rotating it.

The cluster's own role keeps trust authentication, so the tests can always look.
"""

from __future__ import annotations

from typing import Any

import psycopg2

from .pgcluster import PgCluster
from .replication import execute, scalar

__all__ = ["add_password_role", "app_sessions", "server_now", "set_password"]


def add_password_role(cluster: PgCluster, role: str, password: str, method: str = "scram-sha-256") -> None:
    """Create ``role`` with ``password``; from 127.0.0.1 it must give it (``method``: scram-sha-256 or md5)."""
    hba = cluster.data_dir / "pg_hba.conf"
    # The first matching line wins: before initdb's trust lines.
    hba.write_text(f"host all {role} 127.0.0.1/32 {method}\n" + hba.read_text())
    execute(cluster, "SELECT pg_reload_conf()")
    set_password(cluster, role, password, method, create=True)
    execute(cluster, f"GRANT ALL ON SCHEMA public TO {role}")


def set_password(cluster: PgCluster, role: str, password: str, method: str, *, create: bool = False) -> None:
    """``ALTER ROLE role PASSWORD``: from now on only ``password`` logs in (open sessions stay)."""
    verb = "CREATE ROLE {} LOGIN" if create else "ALTER ROLE {}"
    execute(cluster, f"SET password_encryption = '{method}'; {verb.format(role)} PASSWORD %s", (password,))


def app_sessions(cluster: PgCluster, app_name: str) -> dict[int, Any]:
    """{pid: backend_start} of the sessions with this application_name."""
    conn = psycopg2.connect(cluster.dsn, connect_timeout=5)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pid, backend_start FROM pg_stat_activity WHERE application_name = %s", (app_name,))
            return {int(pid): start for pid, start in cur.fetchall()}
    finally:
        conn.close()


def server_now(cluster: PgCluster) -> Any:
    """The server's clock (to compare with backend_start)."""
    return scalar(cluster, "SELECT now()")
