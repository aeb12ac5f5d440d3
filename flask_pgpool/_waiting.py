"""The queue of checkouts waiting for a connection, and the hand-over.

A returned connection goes straight to the first waiter, so waiters are
served in order and a late arrival cannot take it first. Waking one waiter
releases one lock: no condition variable, no event, nothing allocated per
wait (each thread reuses its own :class:`Waiter`).

Every method and function here runs under the pool's lock, except
:meth:`Waiter.wait`. The functions at the end are the pool's side of a
hand-over: a connection given back goes to the first waiter or to the idle
list, and a slot freed wakes whoever may use it.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._pool import ConnectionPool
    from ._record import ConnectionRecord
    from ._state import ProcessState

__all__ = ["WaitQueue", "Waiter", "count_wait", "forget", "give_back"]

_monotonic = time.monotonic


class Waiter:
    """One thread's checkout while it waits: its place in the queue and its deadlines.

    ``_signal`` is a lock kept locked while nobody has signalled: releasing
    it wakes the waiting thread, which takes it back as it wakes.
    ``signalled`` (under the pool's lock) says whether a release is pending,
    so that it is released at most once per wait.
    """

    __slots__ = (
        "_signal",
        "counted_from",
        "deadline",
        "down_since",
        "in_queue",
        "joined",
        "queued",
        "record",
        "signalled",
        "sleep",
        "spawn",
        "started",
    )

    def __init__(self) -> None:
        self._signal = threading.Lock()
        self._signal.acquire()
        self.signalled = False
        self.record: ConnectionRecord | None = None  # set by a hand-over
        self.in_queue = False
        self.start(0.0, 0.0)

    def start(self, started: float, deadline: float) -> None:
        """Begin a new checkout, started at ``started``, that gives up at ``deadline``."""
        self.started = started
        self.counted_from = started  # its wait until then is in requests_wait_ms
        self.deadline = deadline
        self.joined = False  # has been in the queue during this checkout
        self.queued = False  # counted in requests_queued (once per checkout)
        self.down_since: float | None = None  # when it found the database down
        self.sleep = 0.0  # how long to wait next
        self.spawn = 0  # connections to open before waiting

    def wake(self, record: ConnectionRecord | None = None) -> None:
        """Under the pool's lock: hand ``record`` over, or just wake the waiter to look again."""
        if record is not None:
            self.record = record
        if not self.signalled:
            self.signalled = True
            self._signal.release()

    def wait(self, seconds: float) -> bool:
        """Outside the lock: sleep until woken or ``seconds`` have passed; True if woken.

        A wake-up leaves the lock taken again, as before the wait.
        """
        return self._signal.acquire(timeout=max(seconds, 0.0))

    def take_handed(self) -> ConnectionRecord | None:
        """Without the pool's lock, right after a wake-up: the connection handed over, if any.

        Safe without the lock: a hand-over takes the waiter off the queue
        before it sets ``record`` and wakes it, so once the record is seen
        nobody else touches this waiter.
        """
        record = self.record
        if record is not None:
            self.record = None
            self.signalled = False
        return record

    def take(self) -> ConnectionRecord | None:
        """Under the pool's lock, after a wait: the connection handed over, if any."""
        if self.signalled:
            # Woken after a timed-out wait had stopped waiting: take the
            # pending release back, so that the next wait does sleep.
            self._signal.acquire(blocking=False)
            self.signalled = False
        record, self.record = self.record, None
        return record


class WaitQueue(collections.deque[Waiter]):
    """First come, first served; owned by one pool in one process.

    A deque, so that ``len()`` and truth tests, on every checkout and return,
    cost no Python call.
    """

    __slots__ = ("_local",)

    def __init__(self) -> None:
        super().__init__()
        self._local = threading.local()

    def ticket(self, started: float, deadline: float) -> Waiter:
        """The calling thread's waiter, ready for a new checkout (not queued yet)."""
        waiter: Waiter | None = getattr(self._local, "waiter", None)
        if waiter is None:
            waiter = self._local.waiter = Waiter()
        waiter.start(started, deadline)
        return waiter

    def enqueue(self, waiter: Waiter) -> None:
        """Queue at the end."""
        self.append(waiter)
        waiter.in_queue = waiter.joined = True

    def rejoin_first(self, waiter: Waiter) -> None:
        """Queue at the head: a waiter whose connection turned out dead keeps its place."""
        self.appendleft(waiter)
        waiter.in_queue = waiter.joined = True

    def leave(self, waiter: Waiter) -> None:
        """Take a waiter off the queue, wherever it is; the next one looks again if it was first."""
        if not waiter.in_queue:
            return
        waiter.in_queue = False
        if self[0] is waiter:
            self.popleft()
            self.wake_first()
            return
        with contextlib.suppress(ValueError):
            self.remove(waiter)

    def first(self) -> Waiter | None:
        return self[0] if self else None

    def waiting(self) -> list[Waiter]:
        """The waiters, first in line first."""
        return list(self)

    def hand_over(self, record: ConnectionRecord) -> Waiter | None:
        """Give ``record`` to the first waiter and return it; None if nobody waits."""
        if not self:
            return None
        waiter = self.popleft()
        waiter.in_queue = False
        waiter.wake(record)
        return waiter

    def wake_first(self) -> None:
        """Wake the first waiter to look again (a slot was freed, a backoff ended...)."""
        if self:
            self[0].wake()

    def wake_each(self) -> None:
        """Wake every waiter to look again, keeping their places (an attempt to connect failed)."""
        for waiter in self:
            waiter.wake()

    def wake_all(self) -> None:
        """Wake every waiter and empty the queue (the pool is closing)."""
        while self:
            waiter = self.popleft()
            waiter.in_queue = False
            waiter.wake()


def give_back(state: ProcessState, record: ConnectionRecord) -> None:
    """Under the lock: hand a healthy connection to the first waiter, or make it idle."""
    if not state.waiters:
        state.idle.append(record)
        return
    record.in_use = True  # before the hand-over: the waiter takes it without the lock
    waiter = state.waiters.hand_over(record)
    if waiter is not None and waiter.queued:
        count_wait(state, waiter, _monotonic())
    if state.backoff.active:
        # The new first in line owns the backoff timer now.
        state.waiters.wake_first()


def forget(pool: ConnectionPool, state: ProcessState, record: ConnectionRecord) -> None:
    """Under the lock: the connection leaves the pool; its slot is free."""
    if state.records.get(id(record.conn)) is record:
        del state.records[id(record.conn)]
    state.waiters.wake_first()
    if state.size < pool.minconn:
        pool._housekeeper.wake()


def count_wait(state: ProcessState, waiter: Waiter, now: float) -> None:
    """Under the lock, as a waiter gets a connection: add its wait to
    requests_wait_ms (if it had to wait for a return), in the lock section
    that hands the connection over rather than one of its own."""
    if waiter.queued:
        state.counters.requests_wait_ms += (now - waiter.counted_from) * 1000
    waiter.counted_from = now
