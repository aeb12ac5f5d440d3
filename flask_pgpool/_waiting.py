"""The queue of checkouts waiting for a connection, and the hand-over.

A returned connection goes straight to the first waiter, so waiters are
served in order and a late arrival cannot take it first. Waking one waiter
releases one lock: no condition variable, no event, nothing allocated per
wait (each thread reuses its own :class:`Waiter`).

Every method here runs under the pool's lock, except :meth:`Waiter.wait`.
"""

from __future__ import annotations

import collections
import contextlib
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._record import ConnectionRecord

__all__ = ["WaitQueue", "Waiter"]


class Waiter:
    """One thread's checkout while it waits: its place in the queue and its deadlines.

    ``_signal`` is a lock kept locked while nobody has signalled: releasing
    it wakes the waiting thread, which takes it back as it wakes.
    ``signalled`` (under the pool's lock) says whether a release is pending,
    so that it is released at most once per wait.
    """

    __slots__ = (
        "_signal",
        "deadline",
        "down_since",
        "in_queue",
        "joined",
        "queued",
        "record",
        "signalled",
        "sleep",
        "spawn",
    )

    def __init__(self) -> None:
        self._signal = threading.Lock()
        self._signal.acquire()
        self.signalled = False
        self.record: ConnectionRecord | None = None  # set by a hand-over
        self.in_queue = False
        self.start(0.0)

    def start(self, deadline: float) -> None:
        """Begin a new checkout that gives up at ``deadline``."""
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

    def wait(self, seconds: float) -> None:
        """Outside the lock: sleep until woken or ``seconds`` have passed.

        A wake-up leaves the lock taken again, as before the wait.
        """
        self._signal.acquire(timeout=max(seconds, 0.0))

    def take(self) -> ConnectionRecord | None:
        """Under the pool's lock, after a wait: the connection handed over, if any."""
        if self.signalled:
            # Woken after a timed-out wait had stopped waiting: take the
            # pending release back, so that the next wait does sleep.
            self._signal.acquire(blocking=False)
            self.signalled = False
        record, self.record = self.record, None
        return record


class WaitQueue:
    """First come, first served; owned by one pool in one process."""

    __slots__ = ("_local", "_queue")

    def __init__(self) -> None:
        self._queue: collections.deque[Waiter] = collections.deque()
        self._local = threading.local()

    def __len__(self) -> int:
        return len(self._queue)

    def __bool__(self) -> bool:
        return bool(self._queue)

    def ticket(self, deadline: float) -> Waiter:
        """The calling thread's waiter, ready for a new checkout (not queued yet)."""
        waiter: Waiter | None = getattr(self._local, "waiter", None)
        if waiter is None:
            waiter = self._local.waiter = Waiter()
        waiter.start(deadline)
        return waiter

    def append(self, waiter: Waiter) -> None:
        """Queue at the end."""
        self._queue.append(waiter)
        waiter.in_queue = waiter.joined = True

    def rejoin_first(self, waiter: Waiter) -> None:
        """Queue at the head: a waiter whose connection turned out dead keeps its place."""
        self._queue.appendleft(waiter)
        waiter.in_queue = waiter.joined = True

    def leave(self, waiter: Waiter) -> None:
        """Take a waiter off the queue, wherever it is; the next one looks again if it was first."""
        if not waiter.in_queue:
            return
        waiter.in_queue = False
        if self._queue[0] is waiter:
            self._queue.popleft()
            self.wake_first()
            return
        with contextlib.suppress(ValueError):
            self._queue.remove(waiter)

    def first(self) -> Waiter | None:
        return self._queue[0] if self._queue else None

    def waiting(self) -> list[Waiter]:
        """The waiters, first in line first."""
        return list(self._queue)

    def hand_over(self, record: ConnectionRecord) -> bool:
        """Give ``record`` to the first waiter; False if nobody waits."""
        if not self._queue:
            return False
        waiter = self._queue.popleft()
        waiter.in_queue = False
        waiter.wake(record)
        return True

    def wake_first(self) -> None:
        """Wake the first waiter to look again (a slot was freed, a backoff ended...)."""
        if self._queue:
            self._queue[0].wake()

    def wake_all(self) -> None:
        """Wake every waiter and empty the queue (the pool is closing)."""
        while self._queue:
            waiter = self._queue.popleft()
            waiter.in_queue = False
            waiter.wake()
