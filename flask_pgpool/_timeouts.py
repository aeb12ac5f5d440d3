"""The connect parameters that bound waits: on a silent network, and on slow statements.

A query sent on a connection whose network stopped carrying packets (a NAT or
firewall that dropped its state, a failover that moved the address) waits for
the kernel's TCP retransmission limit: about 15 minutes on Linux. libpq's TCP
settings bound that wait: ``tcp_user_timeout`` gives up on data the server has
not acknowledged, keepalive probes find a path that went silent while the
client waits for an answer or sits idle. Both come from one bound,
``network_timeout``. A statement timeout is a server setting, sent as a startup
option.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from typing import Any, cast

import psycopg2
import psycopg2.extensions
from psycopg2.extensions import connection

from . import _dsn as dsnlib
from ._queries import fetch_one
from ._service import service_params

__all__ = [
    "DEFAULT_NETWORK_TIMEOUT",
    "KEEPALIVE_KEYS",
    "connect",
    "connect_params",
    "keepalive_params",
    "statement_timeout_ms",
]

#: Seconds after which a connection on a silent network is given up, by default.
DEFAULT_NETWORK_TIMEOUT = 30.0

# The kernel's limits (TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT; milliseconds in a C int).
_MAX_KEEPALIVE_SECONDS = 32767
_MAX_KEEPALIVE_COUNT = 127
_MAX_MILLISECONDS = 2**31 - 1
#: The libpq parameters of the network bound: a user who sets any of them sets the bound.
KEEPALIVE_KEYS = frozenset(
    {"keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count", "tcp_user_timeout"}
)
_STATEMENT_TIMEOUT_OPTION = re.compile(r"statement[-_]timeout\s*=", re.IGNORECASE)  # names are case-blind
_REFUSED = "unsupported startup parameter"
# How SHOW prints a duration: the largest unit that divides it ("200ms", "5s", "2min", "0").
_SHOWN_DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|min|h|d)?\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}


def keepalive_params(network_timeout: float) -> dict[str, int]:
    """libpq parameters that give up on a silent path about ``network_timeout`` s after it went silent.

    ``tcp_user_timeout`` bounds data sent and not acknowledged; keepalive
    probes, after a third of the bound and then every sixth, make a silent
    path show while the client waits for an answer or sits idle (Linux ends
    the connection once the probes have gone unanswered for
    ``tcp_user_timeout``; elsewhere after ``keepalives_count`` probes, at
    about the same time).
    """
    idle = min(_MAX_KEEPALIVE_SECONDS, max(1, int(network_timeout // 3)))
    interval = min(_MAX_KEEPALIVE_SECONDS, max(1, int(network_timeout // 6)))
    count = min(_MAX_KEEPALIVE_COUNT, max(1, math.ceil((network_timeout - idle) / interval)))
    return {
        "keepalives": 1,
        "keepalives_idle": idle,
        "keepalives_interval": interval,
        "keepalives_count": count,
        "tcp_user_timeout": min(_MAX_MILLISECONDS, max(1, round(network_timeout * 1000))),
    }


def statement_timeout_ms(statement_timeout: float) -> int:
    """The server's ``statement_timeout`` for a bound in seconds (never 0, which means none)."""
    return min(_MAX_MILLISECONDS, max(1, round(statement_timeout * 1000)))


def connect_params(
    dsn: str,
    connect_args: Mapping[str, Any],
    *,
    network_timeout: float | None,
    statement_timeout: float | None,
) -> dict[str, Any]:
    """The arguments to add to ``psycopg2.connect(dsn, **connect_args)`` for these bounds.

    Any keepalive parameter set in the DSN, ``connect_args`` or the
    connection service (``service=`` or ``PGSERVICE``) leaves the network
    bound to the user: the pool adds none, since a mix of the user's values
    and its own would be a bound nobody chose.
    The statement timeout joins the ``options`` already given (or the
    ``PGOPTIONS`` environment variable), unless those set one.
    """
    explicit = {**dsnlib.parse(dsn), **{k: v for k, v in connect_args.items() if v is not None}}
    given = {**service_params(explicit), **explicit}
    extra: dict[str, Any] = {}
    if network_timeout and not KEEPALIVE_KEYS.intersection(given):
        extra.update(keepalive_params(network_timeout))
    if statement_timeout:
        options = str(given.get("options") or os.environ.get("PGOPTIONS", ""))
        if not _STATEMENT_TIMEOUT_OPTION.search(options):
            extra["options"] = f"{options} {_statement_timeout_option(statement_timeout)}".strip()
    return extra


def _statement_timeout_option(statement_timeout: float) -> str:
    return f"-c statement_timeout={statement_timeout_ms(statement_timeout)}"


def connect(
    dsn: str, kwargs: Mapping[str, Any], statement_timeout: float | None, setting: str = "statement_timeout"
) -> connection:
    """``psycopg2.connect()``, making sure a statement timeout asked for is in force.

    A server (PgBouncer) that refuses the startup option, or accepts it and
    drops it, makes the connect fail with an error that says what to do
    instead, naming ``setting``; a statement timeout that is not in force is
    never silent.
    """
    ours = statement_timeout and _statement_timeout_option(statement_timeout) in str(kwargs.get("options", ""))
    try:
        conn = cast(connection, psycopg2.connect(dsn, **kwargs))
    except psycopg2.OperationalError as exc:
        if ours and _REFUSED in str(exc):
            raise psycopg2.OperationalError(f"{str(exc).strip()}. {_no_startup_options(setting)}") from None
        raise
    if ours:
        assert statement_timeout
        try:
            in_force = _statement_timeout_in_force(conn)
        except BaseException:
            conn.close()
            raise
        if in_force != statement_timeout_ms(statement_timeout):
            conn.close()
            shown = "unknown" if in_force is None else f"{in_force} ms"
            raise psycopg2.OperationalError(
                f"the server's statement_timeout is {shown}, not the "
                f"{statement_timeout_ms(statement_timeout)} ms asked for: the startup option was dropped on "
                f"the way (as PgBouncer does with ignore_startup_parameters = options). "
                f"{_no_startup_options(setting)}"
            )
    return conn


def _statement_timeout_in_force(conn: connection) -> int | None:
    """The session's statement_timeout in ms (None if the server shows it in a form not known here)."""
    # Through _queries: rows are tuples whatever the user's factories, and a
    # LoggingConnection need not be initialized yet. SHOW: one round trip,
    # no catalog lookup; autocommit: no transaction left open.
    autocommit = conn.autocommit
    conn.autocommit = True
    try:
        row = fetch_one(conn, "SHOW statement_timeout")
    finally:
        conn.autocommit = autocommit
    shown = _SHOWN_DURATION.match(str(row[0]) if row else "")
    if shown is None:
        return None
    return int(shown.group(1)) * _UNIT_MS[shown.group(2) or "ms"]


def _no_startup_options(setting: str) -> str:
    return (
        f"The statement timeout ({setting}) is sent as a startup option, which PgBouncer does not pass on to "
        "the server: behind PgBouncer leave it unset and set statement_timeout on the server instead "
        "(ALTER ROLE <user> IN DATABASE <db> SET statement_timeout = ..., or PgBouncer's connect_query)"
    )
