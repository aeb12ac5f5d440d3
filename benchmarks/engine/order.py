"""Order and wait statistics of recorded checkouts: was the queue first come, first served?"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

__all__ = ["order_stats", "percentile", "share_spread", "wait_stats"]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-quantile (0..1) of ``values``, nearest rank; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def wait_stats(waits: Sequence[float]) -> dict[str, float]:
    """Time in getconn(), microseconds."""
    return {
        "p50_us": percentile(waits, 0.50) * 1e6,
        "p99_us": percentile(waits, 0.99) * 1e6,
        "p999_us": percentile(waits, 0.999) * 1e6,
        "max_us": max(waits, default=float("nan")) * 1e6,
    }


def order_stats(records: Sequence[tuple[int, int, float]]) -> dict[str, float]:
    """How far service order strayed from arrival order.

    ``records`` are (arrival ticket, service ticket, wait). A checkout is
    *overtaken* when one that arrived after it was served before it. In a
    strict FIFO queue no checkout is overtaken, apart from the measurement's
    own noise (a thread can be preempted between taking its ticket and
    joining the pool's queue).
    """
    if not records:
        return {
            "overtaken_share": float("nan"),
            "overtakers_mean": float("nan"),
            "overtakers_p99": float("nan"),
            "overtakers_max": float("nan"),
        }
    in_service_order = [arrival for arrival, _, _ in sorted(records, key=lambda r: r[1])]
    rank = {a: i + 1 for i, a in enumerate(sorted(in_service_order))}
    n = len(in_service_order)
    tree = [0] * (n + 1)  # Fenwick tree over arrival ranks already served
    overtakers: list[float] = []
    for served, arrival in enumerate(in_service_order):
        r = rank[arrival]
        earlier_or_same, i = 0, r
        while i:
            earlier_or_same += tree[i]
            i -= i & -i
        overtakers.append(served - earlier_or_same)  # served before this one, arrived after it
        i = r
        while i <= n:
            tree[i] += 1
            i += i & -i
    return {
        "overtaken_share": sum(1 for k in overtakers if k) / n,
        "overtakers_mean": statistics.fmean(overtakers),
        "overtakers_p99": percentile(overtakers, 0.99),
        "overtakers_max": max(overtakers),
    }


def share_spread(per_thread: Sequence[int]) -> dict[str, float]:
    """Pairs per thread relative to the mean (1.0 and 1.0 when every thread got as many turns),
    and how many threads did none at all."""
    mean = statistics.fmean(per_thread) if per_thread else 0.0
    if not mean:
        return {"thread_min_share": float("nan"), "thread_max_share": float("nan"), "threads_starved": 0.0}
    return {
        "thread_min_share": min(per_thread) / mean,
        "thread_max_share": max(per_thread) / mean,
        "threads_starved": float(sum(1 for n in per_thread if not n)),
    }
