"""The pool's options, checked once when a pool is made, and the values derived from them.

An invalid option raises :class:`ValueError` naming it (the checks are
:mod:`flask_pgpool._validate`'s, shared with the configuration), in the order
of the pool's signature, so the first wrong option is the one reported.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._record import HealthPolicy
from ._validate import check_sizes, nonnegative_seconds, positive_seconds, whole_number

__all__ = ["PoolOptions", "check_options"]


@dataclass(frozen=True, slots=True)
class PoolOptions:
    """The options as the pool keeps them, and the bounds derived from them."""

    timeout: float
    max_waiting: int
    max_lifetime: float
    leak_timeout: float | None
    health: HealthPolicy
    network_timeout: float | None  # None: off (0 or None was given)
    statement_timeout: float | None  # None: off (0 or None was given)
    # The fast path of getconn(): an idle connection younger than this needs no
    # ping (never, with health checks off: check_out() decides).
    quick_age: float
    # The bound of a ping, a rollback or a close: no later than the network bound would end it.
    ping_limit: float


def check_options(
    minconn: int,
    maxconn: int,
    *,
    timeout: float,
    max_waiting: int,
    connect_timeout: int,
    max_lifetime: float,
    leak_timeout: float | None,
    health_check: bool,
    ping_after: float | None,
    max_idle: float,
    network_timeout: float | None,
    statement_timeout: float | None,
    kinds: Mapping[str, Any],
) -> PoolOptions:
    """Check the options of :class:`ConnectionPool` (as its signature documents them).

    ``kinds``: the options that are not numbers, by name (see :func:`check_kinds`).
    """
    check_sizes("minconn", minconn, "maxconn", maxconn)
    check_kinds(**kinds)
    timeout = positive_seconds("timeout", timeout)
    max_waiting = whole_number("max_waiting", max_waiting, 0)
    whole_number("connect_timeout", connect_timeout, 0)
    max_lifetime = positive_seconds("max_lifetime", max_lifetime)
    leak_timeout = None if leak_timeout is None else positive_seconds("leak_timeout", leak_timeout)
    health = HealthPolicy(
        health_check=health_check,
        ping_after=None if ping_after is None else nonnegative_seconds("ping_after", ping_after),
        max_idle=positive_seconds("max_idle", max_idle),
    )
    quick_age = health.ping_after if health_check else float("-inf")
    # 0 or None: no bound.
    network_timeout = positive_seconds("network_timeout", network_timeout) if network_timeout else None
    statement_timeout = positive_seconds("statement_timeout", statement_timeout) if statement_timeout else None
    return PoolOptions(
        timeout=timeout,
        max_waiting=max_waiting,
        max_lifetime=max_lifetime,
        leak_timeout=leak_timeout,
        health=health,
        network_timeout=network_timeout,
        statement_timeout=statement_timeout,
        quick_age=float("inf") if quick_age is None else quick_age,
        ping_limit=float(min(b for b in (timeout, connect_timeout, network_timeout) if b)),
    )


def check_kinds(
    *,
    dsn: Any,
    name: Any,
    health_check: Any,
    read_only: Any,
    configure: Any,
    connect_args: Any,
    reset: Any,
    label: Any,
) -> None:
    """Refuse, naming the option, a value of the wrong kind that would otherwise fail later.

    A DSN, arguments or a ``configure`` of the wrong type would only fail at
    the first connect, where it looks like the database being down; a
    ``reset`` of the wrong type would close every returned connection.
    """
    # The DSN and the arguments may hold a password: messages name their type or keys, never their values.
    if not (isinstance(dsn, str) or _callable_with(dsn, 0)):
        raise ValueError(
            "dsn must be a connection string or URL, or a function of no arguments that returns one, "
            f"got {_kind(dsn)}"
        )
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    for option, value in (("health_check", health_check), ("read_only", read_only)):
        if not isinstance(value, bool):
            raise ValueError(f"{option} must be True or False, got {value!r}")
    if configure is not None and not _callable_with(configure, 1):
        raise ValueError(f"configure must be a function that takes the new connection, or None, got {configure!r}")
    if not (connect_args is None or _callable_with(connect_args, 0) or _is_arguments(connect_args)):
        raise ValueError(
            "connect_args must be a dict of psycopg2.connect() keyword arguments other than dsn (or a function "
            f"of no arguments that returns one), or None, got {_kind(connect_args)}"
        )
    if not (reset is None or _callable_with(reset, 1) or (isinstance(reset, str) and reset.strip())):
        raise ValueError(
            f"reset must be SQL (such as 'DISCARD ALL'), a function that takes the connection, or None, got {reset!r}"
        )
    if label is not None and not _callable_with(label, 1):
        raise ValueError(f"label must be a function that takes an option's name, or None, got {label!r}")


def _kind(value: Any) -> str:
    """What ``value`` is, without its contents: its type, and a mapping's keys."""
    if isinstance(value, Mapping):
        return f"a {type(value).__name__} with the keys {', '.join(sorted(map(repr, value)))}"
    return f"{'a function' if callable(value) else type(value).__name__} {getattr(value, '__qualname__', '')}".strip()


def _is_arguments(value: Any) -> bool:
    # dsn is the pool's own argument to psycopg2.connect(): given twice, every connect fails.
    return isinstance(value, Mapping) and all(isinstance(key, str) for key in value) and "dsn" not in value


def _callable_with(value: Any, positional: int) -> bool:
    """Whether ``value`` can be called with ``positional`` arguments (True when Python cannot tell)."""
    if not callable(value):
        return False
    try:
        inspect.signature(value).bind(*range(positional))
    except TypeError:
        return False
    except ValueError:
        return True  # a builtin without a signature
    return True
