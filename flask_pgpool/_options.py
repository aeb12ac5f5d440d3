"""The pool's options, checked once when a pool is made, and the values derived from them.

An invalid option raises :class:`ValueError` naming it (the checks are
:mod:`flask_pgpool._validate`'s, shared with the configuration), in the order
of the pool's signature, so the first wrong option is the one reported.
"""

from __future__ import annotations

from dataclasses import dataclass

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
) -> PoolOptions:
    """Check the options of :class:`ConnectionPool` (as its signature documents them)."""
    check_sizes("minconn", minconn, "maxconn", maxconn)
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
