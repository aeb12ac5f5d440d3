"""``python -m benchmarks.engine --profile``: where a checkout + return pair spends its time.

Writes engine-profile.md (tables; a hand-written analysis kept in
engine-profile-analysis.md beside it is appended) and engine-profile.json.
Rerun it after changing the engine to see what moved.
"""

from __future__ import annotations

import datetime
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import inprocess, tracing, units, whatif
from .contenders import CONTENDERS
from .profile_report import markdown

__all__ = ["render_profile", "run_profile"]

#: The pools profiled, flask-pgpool's first.
PROFILED = ["pgpool", "pgpool_nocheck", "psycopg_pool"]
#: (threads, connections) profiled: alone, and contended.
PROFILE_SHAPES = [(1, 1), (16, 4)]


@dataclass
class _Sizes:
    cprofile_pairs: int
    perf_pairs: int
    perf_repeat: int
    strace_pairs: int
    callgrind_pairs: int  # 0: no callgrind
    unit_n: int
    unit_rounds: int


def _sizes(quick: bool) -> _Sizes:
    if quick:
        return _Sizes(1600, 1600, 1, 200, 0, 50, 5)
    return _Sizes(32000, 32000, 3, 3000, 4000, 200, 100)


def run_profile(
    dsn: str, out: Path, machine: dict[str, Any], versions: dict[str, str], quick: bool, log: Callable[[str], None]
) -> dict[str, Any]:
    sizes = _sizes(quick)
    started = time.time()
    results: dict[str, Any] = {
        "started": datetime.datetime.fromtimestamp(started, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "quick": quick,
        "machine": machine,
        "versions": versions,
        "sizes": sizes.__dict__,
        "load": {},
        "shapes": {},
    }
    for threads, conns in PROFILE_SHAPES:
        shape = f"{threads}/{conns}"
        per_shape: dict[str, Any] = {}
        for key in PROFILED:
            log(f"  {CONTENDERS[key].label}, {threads} thread(s) on {conns} connection(s): cProfile, lock")
            pool = CONTENDERS[key].open(dsn, conns)
            try:
                entry: dict[str, Any] = {
                    "cprofile": inprocess.call_profile(pool, threads, sizes.cprofile_pairs),
                    "lock": inprocess.lock_sections(pool, threads, sizes.cprofile_pairs),
                }
            finally:
                pool.close()
            log("    perf stat")
            entry["perf"] = tracing.perf_counts(key, threads, conns, sizes.perf_pairs, dsn, sizes.perf_repeat)
            per_shape[key] = entry
        results["shapes"][shape] = per_shape
        results["load"][shape] = os.getloadavg()
    log("  allocations")
    results["allocations"] = {}
    for key in PROFILED:
        pool = CONTENDERS[key].open(dsn, 4)
        try:
            results["allocations"][key] = inprocess.allocations(pool, 4, 12)
        finally:
            pool.close()
    log("  system calls per step (strace)")
    results["strace"] = {key: tracing.syscall_trace(key, sizes.strace_pairs, dsn) for key in PROFILED}
    results["callgrind"] = {}
    if sizes.callgrind_pairs:
        for key in PROFILED:
            log(f"  callgrind: {CONTENDERS[key].label}")
            results["callgrind"][key] = tracing.callgrind(key, 1, 1, sizes.callgrind_pairs, dsn)
    log("  unit costs")
    results["units"] = units.unit_costs(dsn, sizes.unit_n, sizes.unit_rounds)
    results["handover"] = units.handover_us(2000 if not quick else 200, 5 if not quick else 1)
    log("  system calls among 16 threads")
    results["contended_calls"] = units.contended_syscalls(dsn, 16, 400 if quick else 5000, 1 if quick else 5)
    log("  what-if prototypes")
    results["whatif"] = whatif.run_whatif(
        dsn, [(1, 1), (16, 4), (64, 8)], 1 if quick else 15, 0.1 if quick else 0.5, log
    )
    if sizes.callgrind_pairs and "skipped" not in results["whatif"]:
        results["whatif"]["callgrind"] = {}
        for key in whatif.PROTOTYPES:
            log(f"  callgrind: what-if {key}")
            results["whatif"]["callgrind"][key] = tracing.callgrind(f"whatif.{key}", 1, 1, sizes.callgrind_pairs, dsn)
        results["whatif"]["callgrind"].update(results["callgrind"])  # the pools themselves, measured above
    results["load"]["end"] = os.getloadavg()
    results["elapsed_s"] = time.time() - started
    with open(out / "engine-profile.json", "w") as f:
        json.dump(results, f, indent=1, default=str)
    render_profile(out)
    log(f"\nprofile: {out / 'engine-profile.md'} ({results['elapsed_s']:.0f} s)")
    return results


def render_profile(out: Path) -> None:
    """engine-profile.md from engine-profile.json, with the hand-written analysis beside it appended."""
    results = json.loads((out / "engine-profile.json").read_text())
    text = markdown(results)
    analysis = out / "engine-profile-analysis.md"
    if analysis.exists():  # written by hand for a committed run, kept across regeneration
        text += "\n" + analysis.read_text()
    (out / "engine-profile.md").write_text(text)
