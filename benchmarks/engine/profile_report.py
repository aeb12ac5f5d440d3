"""engine-profile.md from the results of :func:`~.profile.run_profile`."""

from __future__ import annotations

import threading
from typing import Any

from .contenders import CONTENDERS

__all__ = ["SELECTED", "markdown"]


_OBSERVERS = "<observer calls>"


def _where(func: Any) -> str:
    """How cProfile names a function of the threading module."""
    code = func.__code__
    return f"threading.py:{code.co_firstlineno} {code.co_name}"


#: Row label -> substrings of cProfile function names whose calls it sums.
SELECTED: dict[str, tuple[str, ...]] = {
    "Python-level function calls (all)": (".py:",),
    "time reads (time.monotonic / perf_counter)": ("time.monotonic", "time.perf_counter"),
    "os.getpid() (a system call)": ("posix.getpid",),
    "poll() (a system call that releases the GIL)": ("'poll' of 'select.poll'",),
    "explicit lock acquire() (cProfile does not see `with lock:`)": (
        "'acquire' of '_thread.lock'",
        "'acquire' of '_thread.RLock'",
    ),
    "locks created (_thread.allocate_lock)": ("_thread.allocate_lock",),
    "threading.Event() created": (_where(threading.Event.__init__),),
    "threading.Condition() created": (_where(threading.Condition.__init__),),
    "Event.set()": (_where(threading.Event.set),),
    "Condition.notify() / notify_all()": (_where(threading.Condition.notify), _where(threading.Condition.notify_all)),
    "Event.wait()": (_where(threading.Event.wait),),
    "Condition.wait() (a thread blocks, then is woken)": (_where(threading.Condition.wait),),
    "observer notifications (flask-pgpool's notify / _notify)": (_OBSERVERS,),
    "threads started": (_where(threading.Thread.start),),
}


def _f(value: Any, fmt: str = ".2f") -> str:
    return "n/a" if value is None else format(value, fmt)


def _selected_counts(functions: list[dict[str, Any]]) -> dict[str, float]:
    out = {}
    for label, patterns in SELECTED.items():
        if patterns == (".py:",):
            out[label] = sum(f["calls_per_pair"] for f in functions if ".py:" in f["function"])
        elif patterns == (_OBSERVERS,):
            out[label] = sum(
                f["calls_per_pair"]
                for f in functions
                if f["function"].startswith("flask_pgpool/") and f["function"].split()[-1] in ("notify", "_notify")
            )
        else:
            out[label] = sum(f["calls_per_pair"] for f in functions if any(p in f["function"] for p in patterns))
    return out


def _summary(results: dict[str, Any]) -> list[str]:
    lines = []
    for shape, per in results["shapes"].items():
        keys = list(per)
        lines += [
            "",
            f"### {shape.replace('/', ' thread(s) on ')} connection(s)",
            "",
            "| per pair | " + " | ".join(CONTENDERS[k].label for k in keys) + " |",
            "|---|" + "---:|" * len(keys),
        ]
        rows: dict[str, list[str]] = {}
        for key in keys:
            e = per[key]
            cp = e["cprofile"]
            for label, value in _selected_counts(cp["functions"]).items():
                rows.setdefault(label, []).append(_f(value))
            rows.setdefault("builtin (C) calls", []).append(_f(cp["builtin_calls_per_pair"]))
            rows.setdefault("cProfile self time, us (inflated by cProfile)", []).append(
                _f(cp["total_self_us_per_pair"], ".1f")
            )
            lock = e["lock"]
            rows.setdefault("pool lock sections", []).append(_f(lock and lock["sections_per_pair"]))
            rows.setdefault("pool lock sections that found it taken", []).append(
                _f(lock and lock["contended_per_pair"])
            )
            rows.setdefault("pool lock held, us (wrapped lock: inflated)", []).append(
                _f(lock and lock["held_us_per_pair"])
            )
            perf = e["perf"] or {}
            for name in ("system calls", "futex", "poll", "getpid", "context switches"):
                v = perf.get(name)
                label = f"perf: {name} (all threads; median, min-max)"
                rows.setdefault(label, []).append(
                    "n/a" if v is None else f"{v['median']:.2f} ({v['min']:.2f}-{v['max']:.2f})"
                )
        for label, values in rows.items():
            lines.append(f"| {label} | " + " | ".join(values) + " |")
    return lines


def _functions(results: dict[str, Any], top: int) -> list[str]:
    lines = []
    for shape, per in results["shapes"].items():
        for key in ("pgpool", "psycopg_pool"):
            if key not in per:
                continue
            cp = per[key]["cprofile"]
            lines += [
                "",
                f"#### {CONTENDERS[key].label}, {shape.replace('/', ' thread(s) on ')} connection(s)"
                f" ({cp['pairs']:,} pairs)",
                "",
                "| function | calls/pair | self us/pair | cumulative us/pair |",
                "|---|---:|---:|---:|",
            ]
            for f in cp["functions"][:top]:
                lines.append(
                    f"| `{f['function']}` | {f['calls_per_pair']:.2f} | {f['self_us_per_pair']:.3f}"
                    f" | {f['cum_us_per_pair']:.3f} |"
                )
    return lines


def _strace(results: dict[str, Any]) -> list[str]:
    lines = []
    for key, steps in results["strace"].items():
        if not steps:
            lines.append(f"- {CONTENDERS[key].label}: strace could not run here")
            continue
        lines.append(f"- **{CONTENDERS[key].label}**")
        for step, calls in steps.items():
            total = sum(calls.values())
            detail = ", ".join(f"{name} {n:.2f}" for name, n in calls.items() if n >= 0.01) or "none"
            lines.append(f"  - {step}: {total:.2f} ({detail})")
    return lines


def _callgrind(results: dict[str, Any]) -> list[str]:
    runs = {k: v for k, v in results["callgrind"].items() if v}
    if not runs:
        return ["", "Not run (valgrind missing, or quick mode)."]
    keys = list(runs)
    lines = [
        "",
        "| per pair, 1 thread on 1 connection | " + " | ".join(CONTENDERS[k].label for k in keys) + " |",
        "|---|" + "---:|" * len(keys),
        "| instructions | " + " | ".join(f"{runs[k]['instructions_per_pair']:,.0f}" for k in keys) + " |",
    ]
    for label in next(iter(runs.values()))["calls_per_pair"]:
        lines.append(f"| {label} | " + " | ".join(f"{runs[k]['calls_per_pair'][label]:.2f}" for k in keys) + " |")
    for key in keys:
        lines += [
            "",
            f"{CONTENDERS[key].label}: the C functions with the most instructions of their own, per pair",
            "",
            "| function | instructions/pair |",
            "|---|---:|",
        ]
        lines += [f"| `{f['function']}` | {f['instructions_per_pair']:,.0f} |" for f in runs[key]["top_functions"]]
    return lines


def _whatif(data: dict[str, Any] | None) -> list[str]:
    lines = ["", "## What single changes would gain (prototypes, `benchmarks/engine/whatif.py`)", ""]
    if not data:
        return [*lines, "Not run."]
    if "skipped" in data:
        return [*lines, f"Not run: {data['skipped']}."]
    shapes = list(data["shapes"])
    grind = data.get("callgrind") or {}
    lines += [
        "Each prototype is a private copy of the engine with one change; every row runs in the same",
        "interleaved rounds. vs flask-pgpool: each round's pairs/s over flask-pgpool's (min / **median** / max);",
        "vs psycopg_pool: the same, median. CPU: this process's CPU time per pair (us), less disturbed than",
        "wall time by the machine's other work. Instructions: valgrind's count per pair, one thread (exact",
        "and repeatable, but blind to the time spent in the kernel).",
        "",
    ]
    for shape in shapes:
        first = shape == shapes[0]
        lines += [
            "",
            f"### {shape.replace('/', ' thread(s) on ')} connection(s)",
            "",
            "| variant | pairs/s | vs flask-pgpool | vs psycopg_pool | CPU us/pair | switches/pair"
            + (" | instructions/pair |" if first else " |"),
            "|---|---:|---|---:|---:|---:|" + ("---:|" if first else ""),
        ]
        for key, label in data["labels"].items():
            r = data["shapes"][shape][key]
            v = r["vs_pgpool"]
            g = grind.get(key)
            lines.append(
                f"| {label} | {r['pairs_per_s']:,.0f} | {v['min']:.2f} / **{v['median']:.2f}x** / {v['max']:.2f}"
                f" | {r['vs_psycopg_pool']:.2f}x | {r['cpu_us_per_pair']:.1f} | {r['switches_per_pair']:.2f} |"
                + ((f" {g['instructions_per_pair']:,.0f} |" if g else " |") if first else "")
            )
    return lines


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    load = results["load"]
    sizes = results["sizes"]
    lines = [
        "# Where a checkout + return pair spends its time",
        "",
        f"Run {results['started']} (UTC), {'quick mode (harness check only)' if results['quick'] else 'full run'},"
        f" {results['elapsed_s']:.0f} s. Reproduce: `python -m benchmarks.engine --profile`.",
        "",
        f"- CPU: {m['cpu']}, {m['cores']} cores; Python {m['python']}; PostgreSQL {m['pg_short']}",
        f"- versions: {', '.join(f'{k} {v}' for k, v in results['versions'].items())}",
        "- load average (1/5/15 min): at start "
        + " / ".join(f"{x:.1f}" for x in m["load_at_start"])
        + "; "
        + "; ".join(f"after {k}: " + " / ".join(f"{x:.1f}" for x in v) for k, v in load.items()),
        "",
        "A pair is `putconn(getconn())` with no query. Counts are exact (cProfile, perf, strace and valgrind",
        "count, they do not sample); times are not, on a shared machine, and cProfile inflates small",
        f"functions. cProfile: {sizes['cprofile_pairs']:,} pairs per run; perf: {sizes['perf_pairs']:,} pairs, a run",
        "with none subtracted, repeated; strace: one thread, one connection, the trace cut at markers before each",
        "checkout and each return.",
        "",
        "## Per pair, side by side",
    ]
    lines += _summary(results)
    lines += ["", "## System calls per step (strace, 1 thread on 1 connection)", ""]
    lines += _strace(results)
    lines += [
        "",
        "## Memory blocks (sys.getallocatedblocks)",
        "",
        "Held per checkout: blocks alive after getconn() that were not before (they live until the return).",
        "Net per pair: what a pair leaves behind (should be 0). Held per waiter: 12 threads blocked in getconn()",
        "on a pool of 4 whose connections are all out, less 12 threads blocked on a plain lock.",
        "",
        "| pool | held per checkout | net per pair | held per waiting checkout |",
        "|---|---:|---:|---:|",
    ]
    for key, a in results["allocations"].items():
        lines.append(
            f"| {CONTENDERS[key].label} | {a['held_per_checkout']:.1f} | {a['net_per_pair']:.2f}"
            f" | {a['held_per_waiter']:.1f} |"
        )
    lines += ["", "## Instructions and C-level calls (valgrind callgrind)"]
    lines += _callgrind(results)
    lines += [
        "",
        "## What the elementary steps cost here",
        "",
        "Each timed alone in one thread, interleaved rounds, median (ns per operation).",
        "",
        "| step | wall ns | CPU ns |",
        "|---|---:|---:|",
    ]
    lines += [f"| {u['step']} | {u['wall_ns']:.0f} | {u['cpu_ns']:.0f} |" for u in results["units"]]
    lines += ["", "Waking a blocked thread, one way (two threads ping-pong; min / median / max over runs, us):", ""]
    for label, v in results["handover"].items():
        lines.append(f"- {label}: {v['min']:.1f} / **{v['median']:.1f}** / {v['max']:.1f}")
    lines += [
        "",
        "The same call made by 16 threads at once (each its own loop; wall ns per call, context switches per call):",
        "a call that releases the GIL lets a waiting thread in, and the caller must then get it back.",
        "",
        "| call | ns per call, 16 threads | switches per call |",
        "|---|---:|---:|",
    ]
    for row in results.get("contended_calls", []):
        lines.append(f"| {row['call']} | {row['ns_per_call']:.0f} | {row['switches_per_call']:.4f} |")
    lines += _whatif(results.get("whatif"))
    lines += ["", "## Per function (cProfile, top 25 by own time)"]
    lines += _functions(results, 25)
    return "\n".join(lines) + "\n"
