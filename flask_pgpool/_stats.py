"""The pool's counters and their snapshot, and the observers told of its events.

Counters are plain integer attributes, incremented under the pool's lock:
cheaper than a dict or a Counter on the checkout path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from ._pool import ConnectionPool
    from ._state import ProcessState

__all__ = ["COUNTERS", "STATS_KEYS", "Counters", "Observer", "Observers", "PoolEvent", "snapshot"]

_log = logging.getLogger("flask_pgpool")

#: The keys of :meth:`ConnectionPool.get_stats`, named as in psycopg_pool.
STATS_KEYS = (
    "pool_min",
    "pool_max",
    "pool_size",
    "pool_available",
    "requests_waiting",
    "requests_num",
    "requests_queued",
    "requests_wait_ms",
    "requests_errors",
    "returns_bad",
    "connections_num",
    "connections_ms",
    "connections_errors",
    "connections_lost",
)
#: The keys that count since the start (or the last ``pop_stats()``); the others are gauges.
COUNTERS = STATS_KEYS[5:]

#: What an observer is told of: ``checkout`` (seconds waited), ``timeout`` and
#: ``rejected`` (a failed checkout; seconds waited), ``return`` (seconds the
#: connection was out), ``connect`` and ``connect_error`` (seconds the attempt took).
PoolEvent = Literal["checkout", "timeout", "rejected", "return", "connect", "connect_error"]
Observer = Callable[[PoolEvent, float], None]


class Counters:
    """The counters of :data:`COUNTERS`, as attributes."""

    __slots__ = COUNTERS

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        for key in COUNTERS:
            setattr(self, key, 0)

    def as_dict(self) -> dict[str, int]:
        # requests_wait_ms adds up fractions of a millisecond: shown rounded down.
        return {key: int(getattr(self, key)) for key in COUNTERS}

    # Declared for the type checker; set in reset().
    requests_num: int
    requests_queued: int
    requests_wait_ms: float
    requests_errors: int
    returns_bad: int
    connections_num: int
    connections_ms: int
    connections_errors: int
    connections_lost: int


def snapshot(pool: ConnectionPool, state: ProcessState) -> dict[str, int]:
    """Under the lock: the gauges and counters of :meth:`ConnectionPool.get_stats`, in :data:`STATS_KEYS` order."""
    stats = {
        "pool_min": pool.minconn,
        "pool_max": pool.maxconn,
        "pool_size": state.size,
        "pool_available": len(state.idle),
        "requests_waiting": len(state.waiters),
    }
    stats.update(state.counters.as_dict())
    return stats


class Observers:
    """The callbacks of ``add_observer``; kept across fork, so metrics follow a pool into workers."""

    __slots__ = ("callbacks", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        # Tested before each notify(): a pool without observers pays one attribute read.
        self.callbacks: tuple[Observer, ...] = ()

    def add(self, callback: Observer) -> None:
        # A new tuple: notify() reads it without a lock.
        self.callbacks = (*self.callbacks, callback)

    def notify(self, event: PoolEvent, seconds: float) -> None:
        """Call every observer; an observer's exception is logged, never raised."""
        for callback in self.callbacks:
            try:
                callback(event, seconds)
            except Exception:
                _log.exception("pool %r: observer %r failed on %r", self.name, callback, event)
