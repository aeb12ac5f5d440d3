"""Threads doing checkout + return pairs on one pool for a fixed time."""

from __future__ import annotations

import itertools
import os
import resource
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Sample", "run_pairs"]


@dataclass
class Sample:
    """One timed run of one pool."""

    pairs: int
    seconds: float
    #: This process's CPU seconds over wall seconds: below 1 while the
    #: machine's other work keeps it from the CPU (the GIL caps it near 1).
    cpu_share: float
    #: Context switches in the process per pair (voluntary: a thread blocked).
    voluntary_switches: float
    involuntary_switches: float
    load_1min: float
    per_thread: list[int]
    #: With ``record``: per checkout (arrival ticket, service ticket, seconds in getconn).
    records: list[tuple[int, int, float]] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.pairs / self.seconds if self.seconds else 0.0


def run_pairs(
    getconn: Callable[[], Any],
    putconn: Callable[[Any], None],
    threads: int,
    seconds: float,
    record: bool = False,
) -> Sample:
    """``threads`` threads each repeat ``putconn(getconn())`` until ``seconds`` have passed.

    Without ``record`` the loop does nothing else. With it, each checkout takes
    an arrival ticket just before ``getconn()`` and a service ticket just after,
    and its time in ``getconn()``: the order and the wait of every hand-over.
    """
    running = [True]
    counts = [0] * threads
    records: list[list[tuple[int, int, float]]] = [[] for _ in range(threads)]
    arrivals, services = itertools.count(), itertools.count()
    ready = threading.Barrier(threads + 1)

    def plain(index: int) -> None:
        get, put = getconn, putconn
        n = 0
        ready.wait()
        # A pair that ends after the stop is not counted: the time is up.
        while True:
            put(get())
            if not running[0]:
                break
            n += 1
        counts[index] = n

    def recording(index: int) -> None:
        get, put, clock = getconn, putconn, time.perf_counter
        out = records[index]
        arrive, serve = arrivals.__next__, services.__next__
        n = 0
        ready.wait()
        while True:
            ticket = arrive()
            start = clock()
            conn = get()
            waited = clock() - start
            served = serve()
            put(conn)
            # Kept even after the stop: a checkout starved until then waited that long.
            out.append((ticket, served, waited))
            if not running[0]:
                break
            n += 1
        counts[index] = n

    workers = [threading.Thread(target=recording if record else plain, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = time.process_time()
    ready.wait()
    start = time.perf_counter()
    time.sleep(seconds)
    running[0] = False
    elapsed = time.perf_counter() - start
    for worker in workers:
        worker.join()
    cpu = time.process_time() - cpu
    after = resource.getrusage(resource.RUSAGE_SELF)
    pairs = sum(counts)
    return Sample(
        pairs=pairs,
        seconds=elapsed,
        cpu_share=cpu / elapsed,
        voluntary_switches=(after.ru_nvcsw - usage.ru_nvcsw) / max(pairs, 1),
        involuntary_switches=(after.ru_nivcsw - usage.ru_nivcsw) / max(pairs, 1),
        load_1min=os.getloadavg()[0],
        per_thread=counts,
        records=[r for out in records for r in out],
    )
