"""``flask pgpool-status``: the app's pools, and proof that the database answers."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import click
from flask import current_app
from flask.cli import with_appcontext
from psycopg2.extensions import connection

from ._extension import PgPool
from ._health import bounded, ping
from ._pool import ConnectionPool
from ._queries import fetch_one

__all__ = ["status_command"]


@click.command("pgpool-status")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=5.0,
    show_default=True,
    help="Seconds to wait for each database to answer.",
)
@with_appcontext
def status_command(as_json: bool, timeout: float) -> None:
    """Show each pool of the app and check that its database answers.

    Exits 0 when every database answers, 1 otherwise.
    """
    ext = current_app.extensions.get("pgpool")
    if not isinstance(ext, PgPool):
        raise click.ClickException("flask-pgpool is not set up on this app")
    with _quiet_pool_logs():
        report = {name: _pool_status(pool, timeout) for name, pool in ext.get_pools().items()}
    failed = [name for name, status in report.items() if status["error"]]
    if as_json:
        click.echo(json.dumps({"ok": not failed, "pools": report}, indent=2))
    else:
        for name, status in report.items():
            click.echo(_format(name, status))
    if failed:
        name, error = failed[0], report[failed[0]]["error"]
        if not error.startswith(f"pool {name!r}"):
            error = f"pool {name!r}: {error}"
        # ClickException prints one line to stderr, no traceback, and exits 1.
        raise click.ClickException(error)


@contextlib.contextmanager
def _quiet_pool_logs() -> Iterator[None]:
    """Keep the pool's warnings off the terminal while the command reports them itself.

    With no logging configured, Python prints warnings to stderr, which would
    turn the one-line error into several. Configured logging is left alone.
    """
    logger = logging.getLogger("flask_pgpool")
    if logger.hasHandlers():
        yield
        return
    quiet = logging.NullHandler()
    logger.addHandler(quiet)
    try:
        yield
    finally:
        logger.removeHandler(quiet)


def _pool_status(pool: ConnectionPool, timeout: float) -> dict[str, Any]:
    status: dict[str, Any] = {
        "dsn": None,
        "reachable": False,
        "server_version": None,
        "host": None,
        "port": None,
        "round_trip_ms": None,
        "server_max_connections": None,
        "server_sessions": None,
        "error": None,
    }
    try:
        started = time.monotonic()
        conn = pool.getconn(timeout=timeout)
        broken = True
        try:
            if not ping(conn, timeout):
                raise ConnectionError("the server did not answer a ping")
            status["round_trip_ms"] = round((time.monotonic() - started) * 1000, 1)
            status["server_version"] = _version(conn.server_version)
            # With several hosts in the DSN, the one libpq reached.
            status["host"], status["port"] = conn.info.host, conn.info.port
            status["reachable"] = True
            broken = not _server_capacity(conn, status, timeout)
        finally:
            # A connection whose exchange was cut is closed, not handed back for a rollback.
            pool.putconn(conn, close=broken)
    except Exception as exc:  # one line for the user, whatever went wrong
        status["error"] = pool.redact(_one_line(exc))
    stats = pool.get_stats()
    status["dsn"] = pool.dsn
    status["min"] = stats["pool_min"]
    status["max"] = stats["pool_max"]
    status["in_use"] = stats["pool_size"] - stats["pool_available"]
    status["idle"] = stats["pool_available"]
    status["waiting"] = stats["requests_waiting"]
    status["stats"] = stats
    return status


def _one_line(exc: BaseException) -> str:
    """The error on one line. libpq writes one line per host it tried (a
    multi-host DSN), each maybe followed by an indented hint: keep every
    host's line, drop the hints."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    failures = [line.strip() for line in lines if not line[:1].isspace()]
    return "; ".join(failures) or type(exc).__name__


def _server_capacity(conn: connection, status: dict[str, Any], timeout: float) -> bool:
    """The server's connection limit and use, for sizing; best effort (after the ping).

    Given up after ``timeout`` like the ping: the path may go silent after
    it, and neither libpq nor the kernel ends such a wait soon. In
    autocommit, so that no rollback (another exchange) follows. Returns
    whether the connection is still usable.
    """
    with bounded(conn, timeout) as watchdog:
        autocommit = conn.autocommit
        try:
            conn.autocommit = True
            row = fetch_one(
                conn,
                "SELECT current_setting('max_connections')::int,"
                " (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')",
            )
            if row is not None:
                status["server_max_connections"], status["server_sessions"] = int(row[0]), int(row[1])
        except Exception:  # a restricted role or a proxy's console: not worth failing the status
            pass
        finally:
            if not conn.closed:
                conn.autocommit = autocommit
    return not watchdog.fired and not conn.closed


def _version(number: int) -> str:
    major, minor = divmod(number, 10000)
    return f"{major}.{minor}" if major >= 10 else f"{major}.{minor // 100}.{minor % 100}"


def _where(host: str, port: int) -> str:
    # An IPv6 address in brackets, so that its port stands apart.
    return f"[{host}]:{port}" if ":" in host and not host.startswith("/") else f"{host}:{port}"


def _format(name: str, status: dict[str, Any]) -> str:
    if status["reachable"]:
        answer = (
            f"PostgreSQL {status['server_version']} at {_where(status['host'], status['port'])}, "
            f"answered in {status['round_trip_ms']} ms"
        )
    else:
        answer = f"UNREACHABLE: {status['error']}"
    lines = [
        f"pool {name}: {status['dsn']}",
        f"  server      {answer}",
        f"  connections min {status['min']}, max {status['max']}: "
        f"{status['in_use']} in use, {status['idle']} idle, {status['waiting']} waiting",
        "  stats       " + " ".join(f"{k}={v}" for k, v in status["stats"].items() if not k.startswith("pool_")),
    ]
    if status["server_max_connections"] is not None:
        # Sizing: every process (gunicorn worker) of the app may open up to max.
        lines.append(
            f"  capacity    up to {status['max']} connections per process; server max_connections "
            f"{status['server_max_connections']}, client sessions open {status['server_sessions']}"
        )
    return "\n".join(lines)
