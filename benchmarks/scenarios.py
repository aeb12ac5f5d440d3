"""The three HTTP scenarios: steady, overload, restart."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .apps import LIMIT, VARIANTS
from .database import Database
from .load import run_wrk, timed_load
from .servers import Server


@dataclass
class Plan:
    variants: list[str]
    maxconn: int
    workers: int
    duration: float
    rounds: int
    views: list[str]
    log_dir: Path
    restart_down: float = 2.0
    restart_before: float = 3.0
    restart_after: float = 8.0


def _start_servers(plan: Plan, db: Database, threads: int) -> dict[str, Server]:
    servers: dict[str, Server] = {}
    try:
        for key in plan.variants:
            servers[key] = Server(VARIANTS[key][0], db.dsn, plan.maxconn, threads, plan.workers, plan.log_dir)
        for server in servers.values():
            server.wait_ready()
    except BaseException:
        for server in servers.values():
            server.stop()
        raise
    return servers


def _measure(server: Server, path: str, connections: int, seconds: float) -> dict[str, Any]:
    cpu_before = server.cpu_seconds()
    res = run_wrk(server.url + path, connections, seconds)
    cpu = server.cpu_seconds() - cpu_before
    return {
        "rps": res.rps,
        "requests": res.requests,
        "failed": res.failed,
        "p50_ms": res.p50_ms,
        "p99_ms": res.p99_ms,
        "cpu_us_per_req": cpu / res.requests * 1e6 if res.requests else float("nan"),
    }


def run_throughput(plan: Plan, db: Database, overload: bool, log: Callable[[str], None]) -> dict[str, Any]:
    """Interleaved rounds (A B C ... A B C ...) of wrk against every variant.

    steady: ``maxconn`` threads per worker and as many wrk connections as
    threads in total; overload: four times the threads and connections, the
    pools still ``maxconn`` per worker.
    """
    factor = 4 if overload else 1
    threads = plan.maxconn * factor
    connections = threads * plan.workers
    views = ["db"] if overload else plan.views
    servers = _start_servers(plan, db, threads)
    samples: dict[str, dict[str, list[dict[str, Any]]]] = {v: {k: [] for k in plan.variants} for v in views}
    try:
        for view in views:  # warm-up round, not recorded
            for key in plan.variants:
                run_wrk(servers[key].url + "/" + view, connections, 1)
        for rnd in range(plan.rounds):
            for view in views:
                for key in plan.variants:
                    sample = _measure(servers[key], "/" + view, connections, plan.duration)
                    samples[view][key].append(sample)
                    log(
                        f"  round {rnd + 1}/{plan.rounds} /{view:<4} {key:<13} {sample['rps']:8.0f} req/s "
                        f"{sample['cpu_us_per_req']:7.0f} us CPU/req  failed {sample['failed']}"
                    )
    finally:
        for server in servers.values():
            server.stop()
    return {
        "threads_per_worker": threads,
        "connections": connections,
        "views": {view: _summarize(per_variant) for view, per_variant in samples.items()},
    }


def _summarize(per_variant: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians per variant, and per-round ratios against the limit (median of them)."""
    out: dict[str, Any] = {}
    limit = per_variant.get(LIMIT)
    for key, rounds in per_variant.items():
        row = {
            name: statistics.median(s[name] for s in rounds) for name in ("rps", "cpu_us_per_req", "p50_ms", "p99_ms")
        }
        row["failed"] = sum(s["failed"] for s in rounds)
        row["requests"] = sum(s["requests"] for s in rounds)
        row["rounds"] = rounds
        if limit:
            row["rps_vs_limit"] = statistics.median(
                s["rps"] / ref["rps"] if ref["rps"] else float("nan") for s, ref in zip(rounds, limit, strict=True)
            )
            row["cpu_vs_limit"] = statistics.median(
                s["cpu_us_per_req"] / ref["cpu_us_per_req"] for s, ref in zip(rounds, limit, strict=True)
            )
        out[key] = row
    return out


def paired_ratio(per_variant: dict[str, Any], a: str, b: str, field: str = "rps") -> float | None:
    """Median over rounds of a/b, each round's a against the same round's b."""
    if a not in per_variant or b not in per_variant:
        return None
    pairs = zip(per_variant[a]["rounds"], per_variant[b]["rounds"], strict=True)
    return statistics.median(x[field] / y[field] if y[field] else float("inf") for x, y in pairs)


def run_restart(plan: Plan, db: Database, log: Callable[[str], None]) -> dict[str, Any]:
    """Per variant, twice: stop the database ("fast"), start it again.

    "busy": requests keep coming while the server is down. "idle": the load
    pauses before the stop and resumes once the server is up again, so the
    pool's idle connections are all dead when traffic comes back (a restart
    at a quiet hour). Counts failed requests before and after the moment the
    server accepts connections again (``pg_ctl start -w`` returned), and how
    long after that moment the last failure happened.
    """
    results: dict[str, Any] = {}
    connections = plan.maxconn * plan.workers
    for mode in ("busy", "idle"):
        for key in plan.variants:
            row = _restart_once(plan, db, key, connections, idle=mode == "idle")
            results.setdefault(key, {})[mode] = row
            log(
                f"  restart ({mode}) {key:<13} failed {row['failed']:5d} (after up: {row['failed_after_up']}), "
                f"last failure {row['last_failure_after_up_s']:.2f} s after up"
            )
    return {"connections": connections, "down_s": plan.restart_down, "variants": results}


def _restart_once(plan: Plan, db: Database, key: str, connections: int, idle: bool) -> dict[str, Any]:
    server = Server(VARIANTS[key][0], db.dsn, plan.maxconn, plan.maxconn, plan.workers, plan.log_dir)
    marks: dict[str, float] = {}
    try:
        server.wait_ready()
        run_wrk(server.url + "/db", connections, 1)  # every pool filled and warm

        def restart(go: threading.Event) -> None:
            time.sleep(plan.restart_before)
            if idle:
                go.clear()
                time.sleep(0.5)  # requests in flight finish
            marks["down"] = time.monotonic()
            db.stop()
            time.sleep(plan.restart_down)
            db.start()
            marks["up"] = time.monotonic()
            go.set()

        start = time.monotonic()
        total = plan.restart_before + plan.restart_down + plan.restart_after
        outcomes = timed_load("127.0.0.1", server.port, "/db", connections, total, restart)
    finally:
        server.stop()
        db.start()  # whatever happened, leave the database running
    up = marks["up"]
    after = [o for o in outcomes if o.end >= up]
    failed_after = [o for o in after if not o.ok]
    ok_after = [o for o in after if o.ok]
    return {
        "requests": len(outcomes),
        "failed": sum(not o.ok for o in outcomes),
        "failed_after_up": len(failed_after),
        "down_s": up - marks["down"],
        "last_failure_after_up_s": (max(o.end for o in failed_after) - up) if failed_after else 0.0,
        "first_ok_after_up_s": (min(o.end for o in ok_after) - up) if ok_after else None,
        "elapsed_s": time.monotonic() - start,
    }
