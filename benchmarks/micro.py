"""In-process microbenchmarks: one thread, no HTTP server, no load generator.

Each case is timed in blocks of ``n`` operations; the cases run interleaved
(A B C A B C ...) for ``rounds`` rounds, and the result is the median per-op
time. Ratios are taken within each round (paired), then the median of those.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from typing import Any

import psycopg2
from psycopg2.pool import ThreadedConnectionPool

from flask_pgpool import ConnectionPool

from .apps import dedicated_app, pgpool_app
from .apps.common import QUERY


def _time_block(op: Callable[[], Any], n: int) -> tuple[float, float]:
    """Wall and thread-CPU seconds per call of ``op``, over ``n`` calls (gc paused)."""
    gc.disable()
    try:
        cpu = time.thread_time()
        start = time.perf_counter()
        for _ in range(n):
            op()
        wall = time.perf_counter() - start
        cpu = time.thread_time() - cpu
        return wall / n, cpu / n
    finally:
        gc.enable()


def _interleave(cases: dict[str, Callable[[], Any]], n: int, rounds: int) -> dict[str, list[tuple[float, float]]]:
    """Small blocks, many rounds: a burst of load from elsewhere hits every case alike."""
    for op in cases.values():  # warm up: connections open, code paths hot
        _time_block(op, n * 5)
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, op in cases.items():
            samples[name].append(_time_block(op, n))
    return samples


def _query(conn: Any) -> None:
    with conn.cursor() as cur:
        cur.execute(QUERY)
        cur.fetchone()
    conn.rollback()


def _summary(samples: dict[str, list[tuple[float, float]]], reference: str) -> list[dict[str, Any]]:
    rows = []
    ref = samples[reference]
    for name, times in samples.items():
        wall = [w for w, _ in times]
        cpu = [c for _, c in times]
        rows.append(
            {
                "case": name,
                "median_us": statistics.median(wall) * 1e6,
                "min_us": min(wall) * 1e6,
                "cpu_us": statistics.median(cpu) * 1e6,
                "ratio": statistics.median(w / r[0] for w, r in zip(wall, ref, strict=True)),
                "cpu_ratio": statistics.median(
                    c / r[1] if r[1] else float("nan") for c, r in zip(cpu, ref, strict=True)
                ),
            }
        )
    return rows


def run_micro(dsn: str, n: int, rounds: int) -> dict[str, list[dict[str, Any]]]:
    """Checkout + return alone, the same around one query, and one Flask test-client request."""
    ours = ConnectionPool(1, 4, dsn)
    theirs = ThreadedConnectionPool(1, 4, dsn)
    dedicated = psycopg2.connect(dsn)

    def ours_checkout() -> None:
        ours.putconn(ours.getconn())

    def theirs_checkout() -> None:
        theirs.putconn(theirs.getconn())

    def dedicated_checkout() -> None:
        # A dedicated connection is "checked out" for ever: nothing to do.
        pass

    def ours_query() -> None:
        conn = ours.getconn()
        _query(conn)
        ours.putconn(conn)

    def theirs_query() -> None:
        conn = theirs.getconn()
        _query(conn)
        theirs.putconn(conn)

    def dedicated_query() -> None:
        _query(dedicated)

    pg_client = pgpool_app.create_app(dsn, 4).test_client()
    dedicated_client = dedicated_app.create_app(dsn, 4).test_client()

    def request(client: Any) -> Callable[[], None]:
        def op() -> None:
            resp = client.get("/db")
            if resp.status_code != 200:
                raise RuntimeError(f"/db answered {resp.status_code}")

        return op

    try:
        checkout = _interleave(
            {
                "flask-pgpool ConnectionPool": ours_checkout,
                "psycopg2 ThreadedConnectionPool": theirs_checkout,
                "dedicated connection": dedicated_checkout,
            },
            n * 20,
            rounds,
        )
        query = _interleave(
            {
                "flask-pgpool ConnectionPool": ours_query,
                "psycopg2 ThreadedConnectionPool": theirs_query,
                "dedicated connection": dedicated_query,
            },
            n,
            rounds,
        )
        flask_request = _interleave(
            {
                "flask-pgpool (get_db)": request(pg_client),
                "dedicated connection": request(dedicated_client),
            },
            n,
            rounds,
        )
    finally:
        ours.closeall()
        theirs.closeall()
        dedicated.close()
        for client in (pg_client, dedicated_client):
            ext = client.application.extensions.get("pgpool")
            if ext is not None:
                ext.close(client.application)
    return {
        "checkout": _summary(checkout, "dedicated connection"),
        "query": _summary(query, "dedicated connection"),
        "flask_request": _summary(flask_request, "dedicated connection"),
    }
