"""What a pool holds in one process. A forked child replaces it whole.

Every field is guarded by ``lock``. A child process gets a new state after
``fork()`` (see :mod:`flask_pgpool._fork`): the parent's connections are never
used in the child, its lock may have been held by a thread that does not
exist there, and its waiters and counters are the parent's.
:func:`after_fork` and :func:`after_patch` make a pool's state anew (called
by :mod:`flask_pgpool._fork` through the pool).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Hashable
from typing import TYPE_CHECKING

from . import _fork, _green, _housekeeper
from ._connector import Backoff
from ._record import ConnectionRecord
from ._stats import Counters
from ._waiting import WaitQueue

if TYPE_CHECKING:
    from ._pool import ConnectionPool

__all__ = ["ProcessState", "after_fork", "after_patch"]

_log = logging.getLogger("flask_pgpool")


class ProcessState:
    __slots__ = (
        "backoff",
        "claims",
        "counters",
        "generation",
        "housekeeper_started",
        "idle",
        "keys",
        "lock",
        "lock_factory",
        "opening",
        "pid",
        "records",
        "round_trip",
        "suspect_before",
        "waiters",
    )

    def __init__(self) -> None:
        # Before any lock is made: in a process gevent patched, psycopg2 must
        # wait through gevent, and a half-patched process is refused.
        _green.ensure_cooperative()
        self.pid = os.getpid()
        # gevent's patch_all() replaces threading.Lock: a state whose locks are
        # the standard library's in a process gevent patched since is
        # replaced on first use (see _fork.current_state).
        self.lock_factory = threading.Lock
        self.lock = self.lock_factory()
        # Every open connection of the pool, idle or not, by id(connection):
        # its size is len(records) + opening.
        self.records: dict[int, ConnectionRecord] = {}
        # Idle connections, most recently used last (checkouts take from the
        # end, so the surplus left unused at the front ages out).
        self.idle: list[ConnectionRecord] = []
        # Slots reserved for connections being opened in the background.
        self.opening = 0
        self.waiters = WaitQueue()
        # Keyed checkouts (psycopg2's getconn(key)): the record out under each
        # key, and the keys whose first checkout is still under way.
        self.keys: dict[Hashable, ConnectionRecord] = {}
        self.claims: dict[Hashable, threading.Event] = {}
        self.counters = Counters()
        self.backoff = Backoff()
        # Idle connections last used before this moment may have died unseen
        # (an older one was found dead): they are pinged before use.
        self.suspect_before = float("-inf")
        # Bumped by drain(): connections of an older generation are retired.
        self.generation = 0
        # Recent ping round trip (seconds, smoothed): sizes the ping budget.
        self.round_trip = 0.0
        self.housekeeper_started = False

    @property
    def size(self) -> int:
        """Open connections plus those being opened."""
        return len(self.records) + self.opening


def after_fork(pool: ConnectionPool) -> None:
    """In a child process: the pool starts empty. The parent's connections are
    released without a word on their sockets (see :mod:`flask_pgpool._fork`)."""
    inherited = list(pool._state.records.values())
    pool._state = ProcessState()
    pool._connector.after_fork()
    pool._failover.after_fork()
    pool._housekeeper = _housekeeper.Housekeeper(pool)
    _fork.release_sockets(record.conn for record in inherited)


def after_patch(pool: ConnectionPool) -> None:
    """gevent patched this process after the state was made: a state of
    gevent's locks (and psycopg2's wait callback, see :mod:`flask_pgpool._green`),
    holding the same connections."""
    old = pool._state
    with old.lock:
        new = ProcessState()  # installs the wait callback, or refuses a half-patched process
        new.records, new.idle, new.keys = old.records, old.idle, old.keys
        new.counters, new.backoff = old.counters, old.backoff
        new.generation, new.suspect_before, new.round_trip = old.generation, old.suspect_before, old.round_trip
        old.records, old.idle, old.keys = {}, [], {}
        # The old housekeeper is a real thread: it ends, a greenlet replaces it on the next checkout.
        pool._housekeeper.stop()
        pool._housekeeper = _housekeeper.Housekeeper(pool)
        # Connections being opened for the old state close when they are
        # done (they find the state replaced) and free its slots.
        pool._state = new
    _log.info("pool %r: gevent patched this process after the pool was made; now waiting through gevent", pool.name)
