"""``python -m benchmarks [--quick] [--dsn DSN] [--out DIR]``: run everything, write the results."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from .apps import LIMIT, VARIANTS
from .database import open_database
from .load import wrk_path
from .machine import describe
from .micro import run_micro
from .options import names_from
from .report import chart, markdown, targets
from .scenarios import Plan, run_restart, run_throughput

_RESULTS = Path(__file__).resolve().parent / "results"


def _log(msg: str) -> None:
    print(msg, flush=True)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="tiny durations: checks the harness works (< 2 min)")
    ap.add_argument(
        "--dsn",
        default=os.environ.get("BENCH_DSN"),
        help="use this database (default: a private PostgreSQL started for the run; "
        "the restart scenario needs the private one)",
    )
    ap.add_argument(
        "--out",
        type=Path,
        help="results directory (default benchmarks/results, benchmarks/results/raw/quick with --quick)",
    )
    ap.add_argument(
        "--variants",
        type=names_from(VARIANTS, "variant(s)"),
        default=",".join(VARIANTS),
        help="comma-separated, from: " + ", ".join(VARIANTS),
    )
    ap.add_argument("--scenarios", default="steady,overload,restart,micro")
    ap.add_argument("--maxconn", type=int, default=4, help="pool size per worker = threads per worker (steady)")
    ap.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    ap.add_argument("--duration", type=float, help="seconds per wrk run")
    ap.add_argument("--rounds", type=int, help="interleaved rounds")
    ap.add_argument("--down", type=float, help="seconds the database stays down in the restart scenario (default 2)")
    return ap.parse_args(argv)


def _machine(db_version: str) -> dict[str, Any]:
    try:
        wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split()[1]
    except (OSError, IndexError):
        wrk = "not installed"
    return {**describe(db_version), "gunicorn": metadata.version("gunicorn"), "wrk": wrk}


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    variants: list[str] = args.variants
    scenarios = {s.strip() for s in args.scenarios.split(",")}
    out = args.out or (_RESULTS / "raw" / "quick" if args.quick else _RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    if args.quick:
        duration, rounds, views, micro_n, micro_rounds = 1.0, 1, ["db", "nodb"], 10, 20
    else:
        duration, rounds, views, micro_n, micro_rounds = 3.0, 10, ["db", "nodb"], 20, 300
    plan = Plan(
        variants=variants,
        maxconn=args.maxconn,
        workers=args.workers,
        duration=args.duration or duration,
        rounds=args.rounds or rounds,
        views=views,
        log_dir=_RESULTS / "raw" / "logs",
    )
    if args.quick:
        plan.restart_before, plan.restart_down, plan.restart_after = 1.0, 1.0, 2.0
    if args.down is not None:
        plan.restart_down = args.down
        plan.restart_after = max(plan.restart_after, 8.0)
    if wrk_path() is None:
        _log(
            "wrk is not installed (Debian: apt-get install -y wrk): skipping the HTTP scenarios "
            "(steady, overload, restart); running the in-process microbenchmark only."
        )
        scenarios &= {"micro"}
    if LIMIT not in variants:
        _log(f"note: without the '{LIMIT}' variant there are no ratios against the limit")

    started = time.time()
    db = open_database(args.dsn)
    results: dict[str, Any] = {
        "started": datetime.datetime.fromtimestamp(started, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
    }
    try:
        results["machine"] = _machine(db.version())
        results["plan"] = {
            "quick": args.quick,
            "variants": variants,
            "maxconn": plan.maxconn,
            "workers": plan.workers,
            "duration": plan.duration,
            "rounds": plan.rounds,
        }
        _log(f"database: {results['machine']['postgres']}")
        if "steady" in scenarios:
            _log("steady load")
            results["steady"] = run_throughput(plan, db, overload=False, log=_log)
        if "overload" in scenarios:
            _log("overload")
            results["overload"] = run_throughput(plan, db, overload=True, log=_log)
        if "restart" in scenarios:
            if db.can_restart:
                _log("database restart")
                restart_plan = plan
                if args.quick:  # one variant is enough to check the harness
                    restart_plan = Plan(**{**plan.__dict__, "variants": variants[:1]})
                results["restart"] = run_restart(restart_plan, db, log=_log)
            else:
                _log("skipping the restart scenario: it needs the private database (no --dsn)")
        if "micro" in scenarios:
            _log("in-process microbenchmark")
            results["micro"] = dict(run_micro(db.dsn, micro_n, micro_rounds), rounds=micro_rounds, n=micro_n)
    finally:
        db.close()
    results["elapsed_s"] = time.time() - started

    with open(out / "results.json", "w") as f:
        json.dump(results, f, indent=1, default=str)
    chart_name = "chart.png" if chart(results, out / "chart.png") else None
    text = markdown(results, chart_name)
    analysis = out / "analysis.md"
    if analysis.exists():  # hand-written notes on a committed run, kept across regeneration
        text += "\n" + analysis.read_text()
    (out / "results.md").write_text(text)
    _log("")
    for t in targets(results):
        verdict = "not run" if t["met"] is None else ("met" if t["met"] else "MISSED")
        _log(f"{verdict:>8}  {t['target']}: {t['value'] or 'n/a'}")
    if args.quick:
        _log("(quick mode checks that the harness works; its numbers mean nothing)")
    _log(f"\nresults: {out / 'results.md'} ({results['elapsed_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
