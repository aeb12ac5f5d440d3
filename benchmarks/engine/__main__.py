"""``python -m benchmarks.engine [--quick] [--profile] [--instructions] [--dsn DSN] [--out DIR]``."""

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

from ..database import open_database
from ..machine import describe
from ..options import names_from
from .bench import HANDOVER_SHAPES, SHAPES, Plan, run_engine
from .contenders import CONTENDERS
from .report import chart, markdown

__all__ = ["main"]

_RESULTS = Path(__file__).resolve().parent.parent / "results"
_ROOT = _RESULTS.parent.parent


def _log(msg: str) -> None:
    print(msg, flush=True)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.engine", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="short runs that check the harness (< 1 min)")
    ap.add_argument("--profile", action="store_true", help="where flask-pgpool's time goes: engine-profile.md")
    ap.add_argument(
        "--instructions",
        action="store_true",
        help="instructions per pair under valgrind, which the machine's load does not blur: engine-instructions.md",
    )
    ap.add_argument(
        "--render", action="store_true", help="only rewrite the Markdown (and chart) from the JSON of the last run"
    )
    ap.add_argument("--dsn", default=os.environ.get("BENCH_DSN"), help="default: a private PostgreSQL for the run")
    ap.add_argument("--out", type=Path, help="default benchmarks/results (benchmarks/results/raw/quick with --quick)")
    ap.add_argument(
        "--contenders",
        type=names_from(CONTENDERS, "contender(s)"),
        default=",".join(CONTENDERS),
        help="comma-separated, from: " + ", ".join(CONTENDERS),
    )
    ap.add_argument("--rounds", type=int, help="interleaved rounds per shape")
    ap.add_argument("--seconds", type=float, help="seconds per pool per round")
    return ap.parse_args(argv)


def versions() -> dict[str, str]:
    """The checkout's commit and the compared packages' versions."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(_ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    out = {"flask-pgpool": f"{metadata.version('flask-pgpool')} ({commit})"}
    for dist in ("psycopg2-binary", "psycopg", "psycopg-pool", "SQLAlchemy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def _plan(args: argparse.Namespace, contenders: list[str]) -> Plan:
    if args.quick:
        plan = Plan(contenders, 2, 0.2, 1, 0.3, 0.05, SHAPES, HANDOVER_SHAPES)
    else:
        plan = Plan(contenders, 9, 1.0, 5, 1.0, 0.3, SHAPES, HANDOVER_SHAPES)
    plan.rounds = args.rounds or plan.rounds
    plan.seconds = args.seconds or plan.seconds
    return plan


def _render(out: Path, results: dict[str, Any]) -> None:
    chart(results, out / "engine.png")
    text = markdown(results, "engine.png")
    analysis = out / "engine-analysis.md"
    if analysis.exists():  # written by hand for a committed run, kept across regeneration
        text += "\n" + analysis.read_text()
    (out / "engine.md").write_text(text)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    contenders: list[str] = args.contenders
    out: Path = args.out or (_RESULTS / "raw" / "quick" if args.quick else _RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    if args.render:
        if args.profile:
            from .profile import render_profile

            render_profile(out)
        else:
            _render(out, json.loads((out / "engine.json").read_text()))
        return 0
    started = time.time()
    db = open_database(args.dsn)
    try:
        machine = describe(db.version())
        _log(f"database: {machine['postgres']}; {machine['note']}")
        if args.profile:
            from .profile import run_profile

            run_profile(db.dsn, out, machine, versions(), args.quick, _log)
            return 0
        if args.instructions:
            from .instructions import run_instructions, write

            counted: dict[str, Any] = {
                "started": datetime.datetime.fromtimestamp(started, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
                "machine": machine,
                "versions": versions(),
            }
            counted.update(run_instructions(contenders, db.dsn, _log, repeats=1 if args.quick else 2))
            counted["elapsed_s"] = time.time() - started
            _log(f"\nresults: {write(out, counted)}")
            return 0
        plan = _plan(args, contenders)
        results: dict[str, Any] = {
            "started": datetime.datetime.fromtimestamp(started, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
            "machine": machine,
            "versions": versions(),
        }
        results.update(run_engine(plan, db.dsn, _log))
        results["plan"]["quick"] = args.quick
    finally:
        db.close()
    results["load_at_end"] = os.getloadavg()
    results["elapsed_s"] = time.time() - started
    with open(out / "engine.json", "w") as f:
        json.dump(results, f, indent=1, default=str)
    _render(out, results)
    _log(f"\nresults: {out / 'engine.md'} ({results['elapsed_s']:.0f} s)")
    if args.quick:
        _log("(quick mode checks that the harness works; its numbers mean little)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
