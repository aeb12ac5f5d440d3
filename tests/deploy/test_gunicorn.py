"""The gunicorn recipe: gthread workers, --preload, one pool per worker process.

A real gunicorn (2 workers x 2 threads) serves an app module written to tmp_path;
the test asks which worker and which server session answered each request.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

APP_MODULE = '''
import os

from flask import Flask, jsonify

from flask_pgpool import PgPool, get_db

app = Flask(__name__)
app.config.update(
    PGPOOL_DSN=os.environ["TEST_APP_DSN"],
    PGPOOL_MAXCONN=2,  # = --threads: a thread never waits for a connection
    PGPOOL_CONNECT_ARGS={"application_name": os.environ["TEST_APP_NAME"]},
)
pgpool = PgPool(app)

if os.environ.get("TEST_TOUCH_DB_AT_IMPORT"):
    # An app that queries at import time: the --preload master then holds a connection.
    with app.app_context():
        with get_db().cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            with open(os.environ["TEST_MASTER_PID_FILE"], "w") as f:
                f.write(str(cur.fetchone()[0]))


if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

    from flask_pgpool.metrics import PgPoolMetrics

    PgPoolMetrics(app)

    @app.get("/metrics")
    def metrics():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), 200, {"Content-Type": CONTENT_TYPE_LATEST}


@app.get("/pid")
def pid():
    with get_db().cursor() as cur:
        cur.execute("SELECT pg_backend_pid(), pg_sleep(0.02)")
        backend = cur.fetchone()[0]
    return jsonify(worker=os.getpid(), backend=backend)
'''


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"gunicorn exited early with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("gunicorn did not listen in time")


@pytest.fixture
def gunicorn(pg_server_dsn: str, app_name: str, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Start ``gunicorn --preload -k gthread -w 2 --threads 2`` on the app module."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*options: str, **env: str) -> tuple[subprocess.Popen[bytes], str]:
        (tmp_path / "wsgiapp.py").write_text(textwrap.dedent(APP_MODULE))
        port = _free_port()
        environ = {
            **os.environ,
            "TEST_APP_DSN": pg_server_dsn,  # direct: this is about processes, not PgBouncer
            "TEST_APP_NAME": app_name,
            **env,
        }
        cmd = [
            sys.executable, "-m", "gunicorn", "--preload", "--worker-class", "gthread",
            "--workers", "2", "--threads", "2", "--bind", f"127.0.0.1:{port}",
            "--pythonpath", str(tmp_path), "--graceful-timeout", "10", "--log-level", "warning",
            *options, "wsgiapp:app",
        ]  # fmt: skip
        proc = subprocess.Popen(cmd, env=environ, cwd=tmp_path)
        procs.append(proc)
        _wait_for_port(port, proc)
        return proc, f"http://127.0.0.1:{port}"

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _get(url: str) -> dict[str, int]:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return dict(json.load(response))


def _serve_until_both_workers_answer(base: str) -> dict[int, set[int]]:
    """Concurrent requests until both workers have answered: {worker pid: backend pids}."""
    seen: dict[int, set[int]] = {}
    with concurrent.futures.ThreadPoolExecutor(8) as executor:
        for _ in range(25):  # 200 requests at most; both workers answer long before
            for answer in executor.map(lambda _: _get(base + "/pid"), range(8)):
                seen.setdefault(answer["worker"], set()).add(answer["backend"])
            if len(seen) >= 2:
                break
    return seen


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0


def _eventually_empty(sessions: Callable[..., list[Any]], timeout: float = 10.0) -> list[Any]:
    deadline = time.monotonic() + timeout
    while (left := sessions()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def test_preload_gthread_workers_have_their_own_connections(
    gunicorn: Callable[..., Any], server_sessions: Callable[..., list[Any]]
) -> None:
    proc, base = gunicorn()
    assert server_sessions() == []  # the preloaded master opened nothing
    seen = _serve_until_both_workers_answer(base)
    assert len(seen) == 2, seen
    first, second = seen.values()
    assert not first & second  # no server session shared between workers
    assert all(len(backends) <= 2 for backends in seen.values())  # at most maxconn each
    assert {pid for pid, _ in server_sessions()} == first | second
    _stop(proc)
    assert _eventually_empty(server_sessions) == []  # a clean shutdown leaves no session


def test_a_master_that_used_the_database_shares_nothing_with_its_workers(
    gunicorn: Callable[..., Any], server_sessions: Callable[..., list[Any]], tmp_path: Path
) -> None:
    pid_file = tmp_path / "master-backend"
    proc, base = gunicorn(TEST_TOUCH_DB_AT_IMPORT="1", TEST_MASTER_PID_FILE=str(pid_file))
    master_backend = int(pid_file.read_text())
    seen = _serve_until_both_workers_answer(base)
    assert len(seen) == 2, seen
    workers_backends = set().union(*seen.values())
    assert master_backend not in workers_backends
    # The workers neither used nor closed the master's connection: it is still there, idle.
    assert (master_backend, "idle") in server_sessions()
    _stop(proc)
    assert _eventually_empty(server_sessions) == []


GUNICORN_CONF = """
from prometheus_client import multiprocess


def child_exit(server, worker):
    multiprocess.mark_process_dead(worker.pid)
"""


def _scrape(base: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(base + "/metrics", timeout=10) as response:
        text = response.read().decode()
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            totals[s.name] = totals.get(s.name, 0.0) + s.value
    return totals


def test_metrics_in_multiprocess_mode_add_up_the_workers(
    gunicorn: Callable[..., Any], tmp_path: Path, server_sessions: Callable[..., list[Any]]
) -> None:
    pytest.importorskip("prometheus_client", reason="the 'prometheus' extra is not installed")
    prom_dir = tmp_path / "prometheus"
    prom_dir.mkdir()
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text(GUNICORN_CONF)
    proc, base = gunicorn("--config", str(conf), PROMETHEUS_MULTIPROC_DIR=str(prom_dir))
    seen = _serve_until_both_workers_answer(base)
    assert len(seen) == 2, seen
    totals = _scrape(base)
    # Both workers report; the --preload master, which never queried, does not.
    assert totals["flask_pgpool_connections_max"] == 4
    assert totals["flask_pgpool_connections"] == len(server_sessions())
    assert totals["flask_pgpool_checkout_wait_seconds_count"] >= 8

    # A worker dies; gunicorn's child_exit hook drops its gauges; its replacement has not queried yet.
    gone = next(iter(seen))
    os.kill(gone, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and _scrape(base)["flask_pgpool_connections_max"] != 2:
        time.sleep(0.2)
    totals = _scrape(base)
    assert totals["flask_pgpool_connections_max"] == 2
    # The killed worker's sessions end as the server sees its sockets close.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(server_sessions()) != totals["flask_pgpool_connections"]:
        time.sleep(0.1)
    assert len(server_sessions()) == totals["flask_pgpool_connections"] > 0
    _stop(proc)
