"""Interleaved rounds of every pool at every size: pairs per second, hand-over waits and order."""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .contenders import CONTENDERS, REFERENCE, OpenPool
from .order import order_stats, share_spread, wait_stats
from .pairs import Sample, run_pairs

__all__ = ["HANDOVER_SHAPES", "SHAPES", "Plan", "run_engine"]

#: (threads, connections): one on one, as many threads as connections, and two contended shapes.
SHAPES: list[tuple[int, int]] = [(1, 1), (4, 4), (16, 4), (64, 8)]
#: The contended shapes, where every checkout waits for a hand-over.
HANDOVER_SHAPES: list[tuple[int, int]] = [(16, 4), (64, 8)]


@dataclass
class Plan:
    contenders: list[str]
    rounds: int
    seconds: float
    handover_rounds: int
    handover_seconds: float
    warmup_seconds: float
    shapes: list[tuple[int, int]]
    handover_shapes: list[tuple[int, int]]


def _rotated(keys: Sequence[str], round_no: int) -> list[str]:
    k = round_no % len(keys)
    return [*keys[k:], *keys[:k]]


def _spread(values: Sequence[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def _open_all(keys: Sequence[str], dsn: str, conns: int) -> dict[str, OpenPool]:
    pools: dict[str, OpenPool] = {}
    try:
        for key in keys:
            pools[key] = CONTENDERS[key].open(dsn, conns)
    except BaseException:
        _close_all(pools)
        raise
    return pools


def _close_all(pools: dict[str, OpenPool]) -> None:
    for pool in pools.values():
        pool.close()


def _runnable(plan: Plan, threads: int, conns: int) -> tuple[list[str], dict[str, str]]:
    keys, skipped = [], {}
    for key in plan.contenders:
        contender = CONTENDERS[key]
        if threads > conns and not contender.waits:
            skipped[key] = f"cannot run: {contender.note}"
        else:
            keys.append(key)
    return keys, skipped


def _rounds(
    pools: dict[str, OpenPool],
    threads: int,
    rounds: int,
    seconds: float,
    record: bool,
    log: Callable[[str], None],
) -> dict[str, list[Sample]]:
    samples: dict[str, list[Sample]] = {key: [] for key in pools}
    for round_no in range(rounds):
        for key in _rotated(list(pools), round_no):
            pool = pools[key]
            samples[key].append(run_pairs(pool.getconn, pool.putconn, threads, seconds, record))
        ref = samples[REFERENCE][-1].rate if REFERENCE in samples else float("nan")
        log(
            f"    round {round_no + 1}/{rounds} (load {os.getloadavg()[0]:.1f}): "
            + ", ".join(f"{key} {s[-1].rate:,.0f}/s" for key, s in samples.items())
            + (f" [ref {ref:,.0f}]" if record else "")
        )
    return samples


def _throughput_summary(samples: dict[str, list[Sample]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    ref = samples.get(REFERENCE)
    for key, runs in samples.items():
        rates = [s.rate for s in runs]
        row: dict[str, Any] = {
            "label": CONTENDERS[key].label,
            "pairs_per_s": _spread(rates),
            "us_per_pair": statistics.median(1e6 / r for r in rates if r),
            "cpu_share": statistics.median(s.cpu_share for s in runs),
            "voluntary_switches_per_pair": statistics.median(s.voluntary_switches for s in runs),
            "involuntary_switches_per_pair": statistics.median(s.involuntary_switches for s in runs),
            "rates": rates,
        }
        if ref:
            # Paired: each round's ratio, then their spread.
            row["vs_reference"] = _spread([s.rate / r.rate for s, r in zip(runs, ref, strict=True)])
        out[key] = row
    return out


def _handover_summary(samples: dict[str, list[Sample]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key, runs in samples.items():
        records = [r for s in runs for r in s.records]
        per_round = [wait_stats([w for _, _, w in s.records]) for s in runs]
        # Order is judged within a run: tickets restart at every run.
        orders = [order_stats(s.records) for s in runs]
        shares = [share_spread(s.per_thread) for s in runs]
        out[key] = {
            "label": CONTENDERS[key].label,
            "checkouts": len(records),
            **wait_stats([w for _, _, w in records]),
            "p50_us_per_round": _spread([w["p50_us"] for w in per_round]),
            "p99_us_per_round": _spread([w["p99_us"] for w in per_round]),
            **{k: statistics.median(o[k] for o in orders) for k in orders[0]},
            "thread_min_share": min(s["thread_min_share"] for s in shares),
            "thread_max_share": max(s["thread_max_share"] for s in shares),
            "threads_starved": max(s["threads_starved"] for s in shares),
            "pairs_per_s": statistics.median(s.rate for s in runs),
        }
    return out


def _shape(
    plan: Plan, dsn: str, threads: int, conns: int, record: bool, log: Callable[[str], None]
) -> tuple[dict[str, Any], dict[str, list[Sample]]]:
    """One shape: open every pool that can run it, warm up, run the rounds, close."""
    keys, skipped = _runnable(plan, threads, conns)
    rounds, seconds = (plan.handover_rounds, plan.handover_seconds) if record else (plan.rounds, plan.seconds)
    meta: dict[str, Any] = {"threads": threads, "conns": conns, "load_before": os.getloadavg(), "skipped": skipped}
    pools = _open_all(keys, dsn, conns)
    try:
        _rounds(pools, threads, 1, plan.warmup_seconds, record, lambda _: None)
        samples = _rounds(pools, threads, rounds, seconds, record, log)
    finally:
        _close_all(pools)
    meta["load_after"] = os.getloadavg()
    meta["load_during"] = _spread([s.load_1min for runs in samples.values() for s in runs])
    return meta, samples


def run_engine(plan: Plan, dsn: str, log: Callable[[str], None]) -> dict[str, Any]:
    """Every shape, every pool, ``plan.rounds`` interleaved rounds; then the hand-over runs."""
    results: dict[str, Any] = {"plan": asdict(plan), "throughput": [], "handover": []}
    for threads, conns in plan.shapes:
        log(f"  {threads} thread(s) on {conns} connection(s)")
        meta, samples = _shape(plan, dsn, threads, conns, False, log)
        results["throughput"].append({**meta, "contenders": _throughput_summary(samples)})
    for threads, conns in plan.handover_shapes:
        log(f"  hand-over waits: {threads} threads on {conns} connections")
        meta, samples = _shape(plan, dsn, threads, conns, True, log)
        results["handover"].append({**meta, "contenders": _handover_summary(samples)})
    return results
