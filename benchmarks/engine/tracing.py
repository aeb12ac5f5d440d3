"""Measures of one pool's pair taken from outside: perf counters, a system-call trace, callgrind.

Each runs :mod:`.probe` in a child process with N pairs and with none; the
difference, divided by N, is what the pairs cost.
"""

from __future__ import annotations

import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from .probe import MARK_CHECKOUT, MARK_END, MARK_RETURN

__all__ = ["PERF_EVENTS", "callgrind", "perf_counts", "syscall_trace"]

#: perf event -> column name.
PERF_EVENTS = {
    "raw_syscalls:sys_enter": "system calls",
    "context-switches": "context switches",
    "syscalls:sys_enter_futex": "futex",
    "syscalls:sys_enter_poll": "poll",
    "syscalls:sys_enter_getpid": "getpid",
}
_ROOT = Path(__file__).resolve().parents[2]


def _probe(contender: str, threads: int, conns: int, pairs: int, dsn: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "benchmarks.engine.probe", contender, str(threads), str(conns), str(pairs),
        "--dsn", dsn, *extra,
    ]  # fmt: skip


def _perf_once(cmd: list[str]) -> dict[str, float]:
    with tempfile.NamedTemporaryFile(suffix=".csv") as out:
        subprocess.run(
            ["perf", "stat", "-x", ",", "-o", out.name, "-e", ",".join(PERF_EVENTS), "--", *cmd],
            cwd=_ROOT, check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        counts: dict[str, float] = {}
        for line in Path(out.name).read_text().splitlines():
            fields = line.split(",")
            if len(fields) > 2 and fields[2] in PERF_EVENTS and fields[0].strip().isdigit():
                counts[fields[2]] = float(fields[0])
        return counts


def perf_counts(contender: str, threads: int, conns: int, pairs: int, dsn: str, repeat: int) -> dict[str, Any] | None:
    """Per pair: every system call, futex, poll and getpid calls, context switches (all threads).

    None when perf cannot count here.
    """
    if shutil.which("perf") is None:
        return None
    with_pairs, without = [], []
    try:
        for _ in range(repeat):
            with_pairs.append(_perf_once(_probe(contender, threads, conns, pairs, dsn)))
            without.append(_perf_once(_probe(contender, threads, conns, 0, dsn)))
    except (OSError, subprocess.CalledProcessError):
        return None
    out: dict[str, Any] = {}
    for event in PERF_EVENTS:
        per_pair = [(a.get(event, 0.0) - b.get(event, 0.0)) / pairs for a, b in zip(with_pairs, without, strict=True)]
        out[PERF_EVENTS[event]] = {"median": statistics.median(per_pair), "min": min(per_pair), "max": max(per_pair)}
    return out


_LINE = re.compile(r"^(\d+)\s+(?:<\.\.\. )?(\w+)")


def syscall_trace(contender: str, pairs: int, dsn: str) -> dict[str, Any] | None:
    """One thread, one connection, under strace: system calls per checkout, per return, and of other threads.

    None when strace is missing or cannot trace here.
    """
    if shutil.which("strace") is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace"
        try:
            subprocess.run(
                ["strace", "-f", "-qq", "-o", str(trace), *_probe(contender, 1, 1, pairs, dsn, "--marks")],
                cwd=_ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        except (OSError, subprocess.CalledProcessError):
            return None
        buckets: dict[str, Counter[str]] = {"checkout": Counter(), "return": Counter(), "other threads": Counter()}
        main_pid: str | None = None
        step: str | None = None
        for line in trace.read_text(errors="replace").splitlines():
            m = _LINE.match(line)
            if not m or "resumed>" in line:
                continue  # a call split around a thread switch counts once, at its start
            pid, call = m.groups()
            main_pid = main_pid or pid
            if pid == main_pid and MARK_CHECKOUT in line:
                step = "checkout"
            elif pid == main_pid and MARK_RETURN in line:
                step = "return"
            elif pid == main_pid and MARK_END in line:
                step = None
            elif step is not None:
                buckets[step if pid == main_pid else "other threads"][call] += 1
    return {name: {call: n / pairs for call, n in counts.most_common()} for name, counts in buckets.items()}


_SPEC = re.compile(r"\((\d+)\)(?: (.*))?")


def _parse_callgrind(path: Path) -> tuple[int, dict[str, int], dict[str, int]]:
    """Total instructions, and per function: instructions of its own, calls made to it."""
    names: dict[str, str] = {}
    own: defaultdict[str, int] = defaultdict(int)
    calls: defaultdict[str, int] = defaultdict(int)
    total = 0
    fn = callee = ""
    inclusive_next = False

    def resolve(spec: str) -> str:
        m = _SPEC.match(spec.strip())
        if not m:
            return spec.strip()
        if m.group(2):
            names[m.group(1)] = m.group(2)
        return names.get(m.group(1), m.group(1))

    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith("fn="):
                fn = resolve(line[3:])
            elif line.startswith("cfn="):
                callee = resolve(line[4:])
            elif line.startswith("calls="):
                calls[callee] += int(line[6:].split()[0])
                inclusive_next = True
            elif line[:1].isdigit() or line[:1] in "+-*":
                if inclusive_next:
                    inclusive_next = False  # the call's inclusive cost, not the caller's own
                    continue
                parts = line.split()
                if len(parts) > 1:
                    own[fn] += int(parts[1])
            elif line.startswith(("summary:", "totals:")):
                total = int(line.split()[1])
    return total, dict(own), dict(calls)


#: C functions whose calls per pair the profile reports.
CALLGRIND_CALLS = {
    "_PyObject_Malloc": "pymalloc allocations",
    "malloc": "libc malloc",
    "take_gil": "GIL takes",
    "PyThread_acquire_lock_timed": "lock acquires (C level)",
    "poll": "poll()",
    "clock_gettime": "clock reads",
    "getpid": "getpid()",
}


def callgrind(contender: str, threads: int, conns: int, pairs: int, dsn: str) -> dict[str, Any] | None:
    """Instructions and C-level calls per pair, counted by valgrind (repeatable on a loaded machine).

    None when valgrind is missing.
    """
    if shutil.which("valgrind") is None:
        return None
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (pairs, 0):
            out = Path(tmp) / f"callgrind.{n}"
            subprocess.run(
                ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--dump-instr=no",
                 *_probe(contender, threads, conns, n, dsn)],
                cwd=_ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            runs.append(_parse_callgrind(out))
    (total, own, calls), (total0, own0, calls0) = runs
    top = sorted(((own.get(f, 0) - own0.get(f, 0)) / pairs, f) for f in own)[::-1][:15]
    return {
        "instructions_per_pair": (total - total0) / pairs,
        "top_functions": [{"function": f, "instructions_per_pair": ir} for ir, f in top],
        "calls_per_pair": {label: (calls.get(f, 0) - calls0.get(f, 0)) / pairs for f, label in CALLGRIND_CALLS.items()},
    }
