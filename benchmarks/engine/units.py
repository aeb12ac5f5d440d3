"""What the elementary steps of a pair cost on this machine, each timed alone."""

from __future__ import annotations

import collections
import importlib
import os
import select
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg2

from ..micro import _interleave

__all__ = ["contended_syscalls", "handover_us", "resource_usage", "unit_costs"]


def _health_check() -> tuple[str, Callable[[Any, Any], Any]] | None:
    """The engine's socket check at checkout, under whichever name this version of the engine gives it."""
    health = importlib.import_module("flask_pgpool._health")
    for name in ("peek_state", "socket_state"):
        check = getattr(health, name, None)
        if callable(check):
            return name, check
    return None


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
                conn.autocommit,
                conn.isolation_level,
                conn.readonly,
                conn.deferrable,
            ),
            "key tuple + dict insert + delete": bookkeeping,
        }
        found = _health_check()
        if found is not None:
            name, check = found
            cases[f"flask-pgpool {name}(conn, poller) (the health check)"] = lambda: check(conn, poller)
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


def _libc_poll_keeping_gil() -> Callable[[Any, int, int], int] | None:
    """libc's poll() called through ctypes.PyDLL, which does not release the GIL."""
    try:
        import ctypes

        libc = ctypes.PyDLL(None)
        poll = libc.poll
    except (OSError, AttributeError):
        return None
    poll.argtypes = (ctypes.c_void_p, ctypes.c_ulong, ctypes.c_int)
    poll.restype = ctypes.c_int
    return poll


def contended_syscalls(dsn: str, threads: int, calls: int, repeat: int) -> list[dict[str, Any]]:
    """Wall time per call when ``threads`` threads make the same call: what releasing the GIL costs.

    A call that releases the GIL lets a waiting thread take it, and the caller
    must then wait for it back: alone it costs nanoseconds, among runnable
    threads it can cost a thread switch.
    """
    import ctypes

    conn = psycopg2.connect(dsn)
    try:
        fd = conn.fileno()

        def select_poll() -> Callable[[], Any]:
            # One poll object per thread: a poll object refuses concurrent use.
            poller = select.poll()
            poller.register(fd, select.POLLIN | select.POLLPRI)
            return lambda: poller.poll(0)

        cases: dict[str, Callable[[], Callable[[], Any]]] = {
            "no system call (time.monotonic())": lambda: time.monotonic,
            "os.getpid() (keeps the GIL)": lambda: os.getpid,
            "select.poll().poll(0) (releases the GIL)": select_poll,
        }
        libc_poll = _libc_poll_keeping_gil()
        if libc_poll is not None:

            def ctypes_poll() -> Callable[[], Any]:
                # struct pollfd {int fd; short events; short revents;}: the second int holds events.
                pollfd = (ctypes.c_int * 2)(fd, select.POLLIN | select.POLLPRI)
                address = ctypes.addressof(pollfd)
                return lambda: (pollfd, libc_poll(address, 1, 0))

            cases["libc poll(fd, 1, 0) through ctypes.PyDLL (keeps the GIL)"] = ctypes_poll
        out: list[dict[str, Any]] = []
        for _ in range(repeat):
            for name, make in cases.items():
                start_gate = threading.Barrier(threads + 1)

                def work(
                    make: Callable[[], Callable[[], Any]] = make, start_gate: threading.Barrier = start_gate
                ) -> None:
                    op = make()
                    start_gate.wait()
                    for _ in range(calls):
                        op()

                workers = [threading.Thread(target=work, daemon=True) for _ in range(threads)]
                for t in workers:
                    t.start()
                before = resource_usage()
                start_gate.wait()
                start = time.perf_counter()
                for t in workers:
                    t.join()
                elapsed = time.perf_counter() - start
                switches = resource_usage() - before
                out.append(
                    {
                        "call": name,
                        "ns_per_call": elapsed / (threads * calls) * 1e9,
                        "switches_per_call": switches / (threads * calls),
                    }
                )
    finally:
        conn.close()
    merged: dict[str, list[dict[str, Any]]] = {}
    for row in out:
        merged.setdefault(row["call"], []).append(row)
    return [
        {
            "call": name,
            "threads": threads,
            "ns_per_call": statistics.median(r["ns_per_call"] for r in rows),
            "switches_per_call": statistics.median(r["switches_per_call"] for r in rows),
        }
        for name, rows in merged.items()
    ]


def resource_usage() -> int:
    """Context switches of this process so far (voluntary and involuntary)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_nvcsw + usage.ru_nivcsw
