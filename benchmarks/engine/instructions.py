"""Instructions per checkout + return pair, counted by valgrind: a cost the machine's load cannot blur.

Wall-clock pairs per second on a shared machine move by tens of per cent from
round to round. The CPU instructions a pair executes do not: valgrind's
callgrind counts them the same way whatever else runs beside it. Each pool
runs twice in a child process under callgrind, once with ``FEW`` pairs and once
with ``MANY``, one thread on one connection; the difference of the two totals
over the difference of the pair counts is the pair's own cost, with start-up,
imports and connecting subtracted out.

``python -m benchmarks.engine --instructions`` writes engine-instructions.md
(and .json); it needs valgrind on the PATH.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["FEW", "MANY", "count_pairs", "markdown", "run_instructions"]

FEW = 2_000
MANY = 22_000
_COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")


def count_pairs(contender: str, dsn: str, pairs: int) -> int:
    """Instructions of a child process that opens ``contender`` and runs ``pairs`` pairs."""
    env = dict(os.environ, PYTHONHASHSEED="0")
    cmd = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        "-m",
        "benchmarks.engine.instructions",
        contender,
        dsn,
        str(pairs),
    ]
    root = Path(__file__).resolve().parent.parent.parent
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root, timeout=900, check=False)
    found = _COLLECTED.search(done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"{contender}: callgrind run failed ({done.returncode}): {done.stderr[-800:]}")
    return int(found.group(1))


def run_instructions(
    contenders: list[str], dsn: str, log: Callable[[str], None], repeats: int = 2
) -> dict[str, Any]:
    """Per contender: instructions per pair for each repeat, and the start-up cost subtracted out."""
    if shutil.which("valgrind") is None:
        raise SystemExit("--instructions needs valgrind (apt-get install valgrind)")
    per_pair: dict[str, list[float]] = {}
    for repeat in range(repeats):
        for key in contenders:
            started = time.monotonic()
            few, many = count_pairs(key, dsn, FEW), count_pairs(key, dsn, MANY)
            cost = (many - few) / (MANY - FEW)
            per_pair.setdefault(key, []).append(cost)
            log(f"  {key}: {cost:,.0f} instructions/pair (run {repeat + 1}, {time.monotonic() - started:.0f} s)")
    return {"few": FEW, "many": MANY, "repeats": repeats, "per_pair": per_pair}


def markdown(results: dict[str, Any]) -> str:
    """The table of engine-instructions.md, ratios against psycopg_pool (defaults)."""
    from .contenders import CONTENDERS, REFERENCE

    per_pair: dict[str, list[float]] = results["per_pair"]

    def median(values: list[float]) -> float:
        ordered = sorted(values)
        mid = len(ordered) // 2
        return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2

    reference = median(per_pair[REFERENCE]) if REFERENCE in per_pair else None
    lines = [
        "# Pool engine alone: instructions per checkout + return",
        "",
        f"Run {results['started']} (UTC), {results['elapsed_s']:.0f} s. Command: "
        "`python -m benchmarks.engine --instructions`.",
        "",
        f"- versions: {', '.join(f'{k} {v}' for k, v in results['versions'].items())}",
        f"- Python {results['machine']['python']}; {results['machine']['postgres']}",
        "",
        "One thread on one connection, `putconn(getconn())` with no query, every pool opened full with its",
        "defaults otherwise. valgrind's callgrind counts the instructions of a child process that runs",
        f"{results['few']:,} pairs and of one that runs {results['many']:,}; the difference over "
        f"{results['many'] - results['few']:,} pairs",
        "is the cost of one pair, start-up subtracted (`PYTHONHASHSEED=0`). Unlike pairs per second,",
        "this does not move with the machine's load. Fewer is faster; the ratio is psycopg_pool's count",
        "over the pool's (above 1.00x: cheaper than psycopg_pool).",
        "",
        "| pool | instructions/pair (each run) | **median** | vs psycopg_pool (defaults) |",
        "|---|---|---:|---:|",
    ]
    for key, values in per_pair.items():
        cost = median(values)
        ratio = f"{reference / cost:.2f}x" if reference else "n/a"
        runs = ", ".join(f"{v:,.0f}" for v in values)
        lines.append(f"| {CONTENDERS[key].label} | {runs} | **{cost:,.0f}** | {ratio} |")
    return "\n".join(lines) + "\n"


def _child(contender: str, dsn: str, pairs: int) -> None:
    from .contenders import CONTENDERS

    pool = CONTENDERS[contender].open(dsn, 1)
    get, put = pool.getconn, pool.putconn
    try:
        for _ in range(pairs):
            put(get())
    finally:
        pool.close()


def write(out: Path, results: dict[str, Any]) -> Path:
    """engine-instructions.json and .md in ``out``; returns the Markdown's path."""
    (out / "engine-instructions.json").write_text(json.dumps(results, indent=1, default=str))
    path = out / "engine-instructions.md"
    path.write_text(markdown(results))
    return path


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2], int(sys.argv[3]))
