"""Prometheus export: one process (collector at scrape time) and multiprocess mode."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from flask_pgpool import PoolTimeout, get_db

prometheus_client = pytest.importorskip("prometheus_client", reason="the 'prometheus' extra is not installed")
from prometheus_client import (  # noqa: E402
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
    multiprocess,
)

from flask_pgpool.metrics import PgPoolMetrics  # noqa: E402


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def add_metrics_view(app: Flask, registry: CollectorRegistry | None = None) -> None:
    """The /metrics view of the README."""

    @app.get("/metrics")
    def metrics() -> Any:
        reg = registry or REGISTRY
        if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
            reg = CollectorRegistry()
            multiprocess.MultiProcessCollector(reg)  # type: ignore[no-untyped-call]
        return generate_latest(reg), 200, {"Content-Type": CONTENT_TYPE_LATEST}


def test_pool_state_is_read_at_scrape_time(
    make_app: Callable[..., Flask], pg_dsn: str, server_sessions: Callable[..., list[Any]]
) -> None:
    # minconn 0: no background refill, so the counts are exactly what the test opened.
    app = make_app(
        PGPOOL_MINCONN=0,
        PGPOOL_MAXCONN=3,
        PGPOOL_BINDS={"replica": {"dsn": pg_dsn, "minconn": 0, "maxconn": 2, "read_only": True}},
    )
    registry = CollectorRegistry()
    PgPoolMetrics(app, registry=registry)
    labels = {"app": app.name, "pool": "default"}
    assert sample(registry, "flask_pgpool_connections_max", **labels) == 3
    assert sample(registry, "flask_pgpool_connections_max", app=app.name, pool="replica") == 2
    assert sample(registry, "flask_pgpool_connections", **labels, state="idle") == 0
    assert server_sessions() == []  # registering and scraping open nothing

    with app.app_context():
        get_db()
        get_db("replica")
        assert sample(registry, "flask_pgpool_connections", **labels, state="in_use") == 1
        assert sample(registry, "flask_pgpool_connections", **labels, state="idle") == 0
    assert sample(registry, "flask_pgpool_connections", **labels, state="in_use") == 0
    assert sample(registry, "flask_pgpool_connections", **labels, state="idle") == 1
    assert sample(registry, "flask_pgpool_connections", app=app.name, pool="replica", state="idle") == 1
    assert sample(registry, "flask_pgpool_checkouts_total", **labels) == 1
    assert sample(registry, "flask_pgpool_connection_attempts_total", **labels) == 1
    assert sample(registry, "flask_pgpool_checkout_wait_seconds_count", **labels) == 1
    assert sample(registry, "flask_pgpool_checkout_wait_seconds_bucket", **labels, le="+Inf") == 1
    assert sample(registry, "flask_pgpool_requests_waiting", **labels) == 0


def test_timeouts_waits_and_connection_errors_are_counted(make_app: Callable[..., Flask]) -> None:
    app = make_app(
        PGPOOL_MAXCONN=1,
        PGPOOL_TIMEOUT=0.3,
        PGPOOL_BINDS={"down": {"dsn": "host=127.0.0.1 port=1 user=app", "timeout": 0.3}},
    )
    registry = CollectorRegistry()
    PgPoolMetrics(app, registry=registry)
    labels = {"app": app.name, "pool": "default"}
    pool = app.extensions["pgpool"].get_pool(app=app)
    held = pool.getconn()
    with pytest.raises(PoolTimeout):
        pool.getconn()
    pool.putconn(held)
    with app.app_context(), pytest.raises(PoolTimeout):
        get_db("down")
    assert sample(registry, "flask_pgpool_checkout_timeouts_total", **labels) == 1
    assert sample(registry, "flask_pgpool_checkout_wait_seconds_count", **labels) == 1  # only the success
    assert sample(registry, "flask_pgpool_checkout_timeouts_total", app=app.name, pool="down") == 1
    assert (sample(registry, "flask_pgpool_connection_errors_total", app=app.name, pool="down") or 0) >= 1
    assert sample(registry, "flask_pgpool_connection_errors_total", **labels) == 0


def test_the_metrics_view_serves_the_text_format(make_app: Callable[..., Flask]) -> None:
    app = make_app(PGPOOL_MINCONN=0)
    registry = CollectorRegistry()
    PgPoolMetrics(app, registry=registry)
    add_metrics_view(app, registry)

    @app.get("/")
    def index() -> Any:
        get_db()
        return "ok"

    client = app.test_client()
    assert client.get("/").status_code == 200
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    text = response.text
    assert f'flask_pgpool_connections{{app="{app.name}",pool="default",state="idle"}} 1.0' in text
    assert "# TYPE flask_pgpool_checkout_wait_seconds histogram" in text
    assert "password" not in text


def test_multiprocess_mode_needs_the_environment(make_app: Callable[..., Flask]) -> None:
    with pytest.raises(RuntimeError, match="PROMETHEUS_MULTIPROC_DIR"):
        PgPoolMetrics(make_app(), multiprocess=True)


WORKER = """
import sys
import threading

from flask import Flask

from flask_pgpool import PgPool, PoolTimeout
from flask_pgpool.metrics import PgPoolMetrics

dsn, app_name, maxconn, hold, idle, timeouts, waiters = sys.argv[1:]
app = Flask("mp_app")
app.config.update(
    PGPOOL_DSN=dsn,
    PGPOOL_MINCONN=0,
    PGPOOL_MAXCONN=int(maxconn),
    PGPOOL_TIMEOUT=0.2,
    PGPOOL_CONNECT_ARGS={"application_name": app_name},
)
PgPool(app)
metrics = PgPoolMetrics(app)
assert metrics.multiprocess
pool = app.extensions["pgpool"].get_pool(app=app)
held = [pool.getconn() for _ in range(int(hold) + int(idle))]
for conn in held[int(hold):]:
    pool.putconn(conn)
for _ in range(int(timeouts)):
    try:
        pool.getconn()
    except PoolTimeout:
        pass
for _ in range(int(waiters)):
    threading.Thread(target=pool.getconn, kwargs={"timeout": 60}, daemon=True).start()
print("ready", flush=True)
sys.stdin.read()  # until the test closes our stdin
"""


@pytest.fixture
def prom_dir(tmp_path: Path) -> Path:
    path = tmp_path / "prometheus"
    path.mkdir()
    return path


@pytest.fixture
def worker(tmp_path: Path, prom_dir: Path, pg_dsn: str, app_name: str) -> Iterator[Callable[..., Any]]:
    """Start a process that uses a pool and exports its metrics to ``prom_dir``."""
    script = tmp_path / "mp_worker.py"
    script.write_text(textwrap.dedent(WORKER))
    procs: list[subprocess.Popen[str]] = []

    def start(maxconn: int, hold: int, idle: int = 0, timeouts: int = 0, waiters: int = 0) -> subprocess.Popen[str]:
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(prom_dir)}
        args = [pg_dsn, app_name, str(maxconn), str(hold), str(idle), str(timeouts), str(waiters)]
        proc = subprocess.Popen(
            [sys.executable, str(script), *args], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def scrape(prom_dir: Path) -> CollectorRegistry:
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(prom_dir))  # type: ignore[no-untyped-call]
    return registry


def test_multiprocess_mode_adds_up_the_processes(worker: Callable[..., Any], prom_dir: Path) -> None:
    a = worker(maxconn=3, hold=2, idle=1, timeouts=0)
    b = worker(maxconn=2, hold=2, idle=0, timeouts=1)
    registry = scrape(prom_dir)
    labels = {"app": "mp_app", "pool": "default"}
    assert sample(registry, "flask_pgpool_connections", **labels, state="in_use") == 4
    assert sample(registry, "flask_pgpool_connections", **labels, state="idle") == 1
    assert sample(registry, "flask_pgpool_connections_max", **labels) == 5  # what the processes may open
    assert sample(registry, "flask_pgpool_checkouts_total", **labels) == 6
    assert sample(registry, "flask_pgpool_connection_attempts_total", **labels) == 5
    assert sample(registry, "flask_pgpool_checkout_wait_seconds_count", **labels) == 5
    assert sample(registry, "flask_pgpool_checkout_timeouts_total", **labels) == 1

    # b ends; gunicorn's child_exit hook calls mark_process_dead for it.
    assert b.stdin is not None
    b.stdin.close()
    assert b.wait(10) == 0
    multiprocess.mark_process_dead(b.pid, path=str(prom_dir))  # type: ignore[no-untyped-call]
    registry = scrape(prom_dir)
    assert sample(registry, "flask_pgpool_connections", **labels, state="in_use") == 2  # live processes only
    assert sample(registry, "flask_pgpool_connections_max", **labels) == 3
    assert sample(registry, "flask_pgpool_checkout_timeouts_total", **labels) == 1  # counters keep their count
    assert a.poll() is None


def test_multiprocess_gauges_follow_waiting_checkouts(worker: Callable[..., Any], prom_dir: Path) -> None:
    # No pool event happens while checkouts wait: the per-process sync thread reports them.
    worker(maxconn=1, hold=1, waiters=2)
    deadline = time.monotonic() + 10
    waiting = None
    while time.monotonic() < deadline:
        waiting = sample(scrape(prom_dir), "flask_pgpool_requests_waiting", app="mp_app", pool="default")
        if waiting == 2:
            break
        time.sleep(0.1)
    assert waiting == 2


def test_one_metrics_object_serves_every_app_of_a_factory(make_app: Callable[..., Flask]) -> None:
    registry = CollectorRegistry()
    metrics = PgPoolMetrics(registry=registry)  # module level, in an app factory project
    first, second = make_app(PGPOOL_MAXCONN=2), make_app(PGPOOL_MAXCONN=5)
    metrics.init_app(first)
    metrics.init_app(second)
    assert sample(registry, "flask_pgpool_connections_max", app=first.name, pool="default") == 2
    assert sample(registry, "flask_pgpool_connections_max", app=second.name, pool="default") == 5
    with pytest.raises(RuntimeError, match="PgPool"):
        metrics.init_app(Flask("no_pgpool_here"))
