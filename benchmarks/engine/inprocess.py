"""Measures of one pool's pair taken inside this process: cProfile, lock sections, allocations."""

from __future__ import annotations

import cProfile
import gc
import pstats
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from .contenders import OpenPool

__all__ = ["CountingLock", "allocations", "call_profile", "lock_sections"]

_SITE = str(Path(threading.__file__).parent)


def _run(pool: OpenPool, threads: int, pairs: int, per_thread: Callable[[], Any] | None = None) -> list[Any]:
    """``pairs`` pairs over ``threads`` threads; ``per_thread()`` makes a context each thread runs in."""
    get, put = pool.getconn, pool.putconn
    start = threading.Barrier(threads)
    out: list[Any] = []

    def work() -> None:
        ctx = per_thread() if per_thread else None
        start.wait()
        if ctx is not None:
            ctx.enable()
        for _ in range(pairs // threads):
            put(get())
        if ctx is not None:
            ctx.disable()
            out.append(ctx)

    workers = [threading.Thread(target=work, daemon=True) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return out


def _name(key: tuple[str, int, str]) -> str:
    filename, line, func = key
    if filename == "~":
        return func
    for prefix in (_SITE + "/site-packages/", _SITE + "/", str(Path(__file__).resolve().parents[2]) + "/"):
        if filename.startswith(prefix):
            filename = filename[len(prefix) :]
            break
    return f"{filename}:{line} {func}"


def call_profile(pool: OpenPool, threads: int, pairs: int) -> dict[str, Any]:
    """cProfile over every worker thread: per function, calls and microseconds per pair.

    cProfile's own overhead inflates small functions; its call counts are exact.
    """
    _run(pool, threads, min(pairs, 2000))  # warm
    profiles = _run(pool, threads, pairs, cProfile.Profile)
    stats = pstats.Stats(profiles[0])
    for prof in profiles[1:]:
        stats.add(prof)
    done = (pairs // threads) * threads
    rows: list[dict[str, Any]] = []
    raw: dict[tuple[str, int, str], tuple[int, int, float, float, Any]] = stats.stats  # type: ignore[attr-defined]
    for key, (_cc, ncalls, tottime, cumtime, _callers) in raw.items():
        rows.append(
            {
                "function": _name(key),
                "calls_per_pair": ncalls / done,
                "self_us_per_pair": tottime / done * 1e6,
                "cum_us_per_pair": cumtime / done * 1e6,
            }
        )
    rows.sort(key=lambda r: -r["self_us_per_pair"])
    python_calls = sum(r["calls_per_pair"] for r in rows if ".py:" in r["function"])
    builtin_calls = sum(r["calls_per_pair"] for r in rows if ".py:" not in r["function"])
    return {
        "pairs": done,
        "functions": rows,
        "python_calls_per_pair": python_calls,
        "builtin_calls_per_pair": builtin_calls,
        "total_self_us_per_pair": sum(r["self_us_per_pair"] for r in rows),
    }


class CountingLock:
    """Stands in for a pool's lock and counts its sections, contended entries and hold time."""

    def __init__(self, lock: Any) -> None:
        self._lock = lock
        self.sections = 0
        self.contended = 0
        self.held = 0.0
        self._since = 0.0

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if not self._lock.acquire(False):
            if not blocking:
                return False
            self.contended += 1
            if not self._lock.acquire(True, timeout):
                return False
        self.sections += 1
        self._since = time.perf_counter()
        return True

    def release(self) -> None:
        self.held += time.perf_counter() - self._since
        self._lock.release()

    def locked(self) -> bool:
        return bool(self._lock.locked())

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def _lock_of(pool: Any) -> tuple[Any, str] | None:
    """Where the pool keeps its lock: ``pool._lock`` (psycopg_pool, the first engine) or ``pool._state.lock``."""
    for holder, name in ((pool, "_lock"), (getattr(pool, "_state", None), "lock")):
        if holder is not None and hasattr(getattr(holder, name, None), "acquire"):
            return holder, name
    return None


def lock_sections(pool: OpenPool, threads: int, pairs: int) -> dict[str, float] | None:
    """The pool's own lock, wrapped for one run; None if it has none we can find."""
    found = _lock_of(pool.pool)
    if found is None:
        return None
    holder, name = found
    inner = getattr(holder, name)
    counting = CountingLock(inner)
    setattr(holder, name, counting)
    try:
        _run(pool, threads, pairs)
    finally:
        setattr(holder, name, inner)
    done = (pairs // threads) * threads
    return {
        "sections_per_pair": counting.sections / done,
        "contended_per_pair": counting.contended / done,
        "held_us_per_pair": counting.held / done * 1e6,
    }


def allocations(pool: OpenPool, conns: int, waiters: int) -> dict[str, float]:
    """Memory blocks (objects and buffers) a checkout holds, and a waiting checkout holds, in this process.

    Held per checkout: blocks live after ``getconn()`` that were not before.
    Held per waiter: ``waiters`` threads blocked in ``getconn()`` on a pool
    whose connections are all out, against as many threads blocked on a
    plain lock (the threads' own cost).
    """
    get, put = pool.getconn, pool.putconn
    for _ in range(200):
        put(get())
    gc.collect()
    gc.disable()
    try:
        n = 200
        held = 0
        net = 0
        for _ in range(n):
            before = sys.getallocatedblocks()
            conn = get()
            middle = sys.getallocatedblocks()
            put(conn)
            after = sys.getallocatedblocks()
            held += middle - before
            net += after - before
        checkout = held / n
    finally:
        gc.enable()

    def blocked_threads(block: Callable[[int], Any]) -> tuple[int, list[threading.Thread]]:
        started = threading.Barrier(waiters + 1)

        def run(index: int) -> None:
            started.wait()
            block(index)

        workers = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(waiters)]
        gc.collect()
        before = sys.getallocatedblocks()
        for t in workers:
            t.start()
        started.wait()
        time.sleep(0.3)  # every thread is now blocked
        return sys.getallocatedblocks() - before, workers

    # The baseline: each thread blocked on a lock of its own, made beforehand.
    gates = [threading.Lock() for _ in range(waiters)]
    for gate in gates:
        gate.acquire()
    plain, workers = blocked_threads(lambda i: gates[i].acquire())
    for gate in gates:
        gate.release()
    for t in workers:
        t.join()
    held_conns = [get() for _ in range(conns)]
    got: list[Any] = []
    pooled, workers = blocked_threads(lambda _: got.append(get()))
    for conn in held_conns:
        put(conn)
    returned = 0
    while returned < waiters:
        if got:
            put(got.pop())
            returned += 1
        else:
            time.sleep(0.001)
    for t in workers:
        t.join()
    return {
        "held_per_checkout": checkout,
        "net_per_pair": net / n,
        "held_per_waiter": (pooled - plain) / waiters,
    }
