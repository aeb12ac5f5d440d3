"""What the elementary steps of a pair cost on this machine, each timed alone."""

from __future__ import annotations

import collections
import os
import select
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg2

from ..micro import _interleave

__all__ = ["handover_us", "unit_costs"]


def _health_check() -> Callable[[Any, Any], Any] | None:
    try:
        from flask_pgpool._health import socket_state
    except ImportError:  # the engine's modules were reorganised
        return None
    return socket_state


def unit_costs(dsn: str, n: int, rounds: int) -> list[dict[str, Any]]:
    """Median nanoseconds per operation (wall and this thread's CPU), interleaved rounds."""
    conn = psycopg2.connect(dsn)
    try:
        poller = select.poll()
        poller.register(conn.fileno(), select.POLLIN | select.POLLPRI)
        lock = threading.Lock()
        counter: collections.Counter[str] = collections.Counter()
        event = threading.Event()
        used: dict[Any, Any] = {}
        observers: list[Callable[[str, float], None]] = []

        def notify(event: str, seconds: float) -> None:
            for callback in observers:
                callback(event, seconds)

        def locked() -> None:
            with lock:
                pass

        def count() -> None:
            counter["requests_num"] += 1

        def set_clear() -> None:
            event.set()
            event.clear()

        def bookkeeping() -> None:
            key = ("pool", 1)
            used[key] = conn
            del used[key]

        cases: dict[str, Callable[[], Any]] = {
            "time.monotonic()": time.monotonic,
            "os.getpid() (a system call)": os.getpid,
            "poll(0) on an idle connection's socket (a system call)": lambda: poller.poll(0),
            "uncontended `with lock:` section": locked,
            "Counter increment (a stats counter)": count,
            "observer call, none registered (a call and an empty loop)": lambda: notify("checkout", 0.0),
            "threading.Event() created": threading.Event,
            "Event.set() + clear(), nobody waiting": set_clear,
            "conn.get_transaction_status()": conn.get_transaction_status,
            "session tuple (4 connection attributes)": lambda: (
                conn.autocommit, conn.isolation_level, conn.readonly, conn.deferrable
            ),
            "key tuple + dict insert + delete": bookkeeping,
        }
        check = _health_check()
        if check is not None:
            cases["flask-pgpool socket_state(conn, poller) (the health check)"] = lambda: check(conn, poller)
        samples = _interleave(cases, n, rounds)
    finally:
        conn.close()
    return [
        {
            "step": name,
            "wall_ns": statistics.median(w for w, _ in times) * 1e9,
            "cpu_ns": statistics.median(c for _, c in times) * 1e9,
        }
        for name, times in samples.items()
    ]


def _ping_pong(kind: str, trips: int) -> float:
    """Seconds per one-way hand-over between two threads, blocking each time."""
    if kind == "lock":
        a, b = threading.Lock(), threading.Lock()
        a.acquire()
        b.acquire()

        def other() -> None:
            for _ in range(trips):
                a.acquire()
                b.release()

        def mine() -> None:
            a.release()
            b.acquire()

    else:
        ea, eb = threading.Event(), threading.Event()

        def other() -> None:
            for _ in range(trips):
                ea.wait()
                ea.clear()
                eb.set()

        def mine() -> None:
            ea.set()
            eb.wait()
            eb.clear()

    thread = threading.Thread(target=other)
    thread.start()
    start = time.perf_counter()
    for _ in range(trips):
        mine()
    elapsed = time.perf_counter() - start
    thread.join()
    return elapsed / (2 * trips)


def handover_us(trips: int, repeat: int) -> dict[str, dict[str, float]]:
    """A wake-up of a blocked thread, one way, through a plain lock and through an Event (min/median/max)."""
    out = {}
    for kind, label in (("lock", "Lock.release() -> blocked acquire()"), ("event", "Event.set() -> blocked wait()")):
        times = [_ping_pong(kind, trips) * 1e6 for _ in range(repeat)]
        out[label] = {"min": min(times), "median": statistics.median(times), "max": max(times)}
    return out
