"""The documented way to drain a running gunicorn app: SIGUSR2 to each worker.

A real gunicorn (2 gthread workers x 2 threads) runs the gunicorn.conf.py of
docs/failover.rst, read from the page, while clients keep requesting; after the signal every server session of the app
is a new one, no request failed, and no worker was restarted.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest

pytestmark = pytest.mark.slow

APP_MODULE = """
import os

from flask import Flask, jsonify

from flask_pgpool import PgPool, get_db

app = Flask(__name__)
app.config.update(
    PGPOOL_DSN=os.environ["TEST_APP_DSN"],
    PGPOOL_MAXCONN=2,
    PGPOOL_CONNECT_ARGS={"application_name": os.environ["TEST_APP_NAME"]},
)
PgPool(app)


@app.get("/pid")
def pid():
    with get_db().cursor() as cur:
        cur.execute("SELECT pg_backend_pid(), pg_sleep(0.01)")
        return jsonify(worker=os.getpid(), backend=cur.fetchone()[0])
"""

DOCS = Path(__file__).resolve().parents[2] / "docs" / "failover.rst"


def documented_recipe() -> str:
    """The gunicorn.conf.py of docs/failover.rst: the code block that defines post_worker_init."""
    text = DOCS.read_text()
    for block in text.split(".. code-block:: python\n")[1:]:
        lines = []
        for line in block.splitlines()[1:]:  # the blank line after the directive
            if line and not line.startswith("    "):
                break
            lines.append(line)
        code = textwrap.dedent("\n".join(lines))
        if "def post_worker_init" in code:
            return code
    raise AssertionError("docs/failover.rst has no gunicorn.conf.py with post_worker_init")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def server(pg_server_dsn: str, app_name: str, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    (tmp_path / "wsgiapp.py").write_text(textwrap.dedent(APP_MODULE))
    (tmp_path / "gunicorn.conf.py").write_text(documented_recipe())
    port = _free_port()
    env = {**os.environ, "TEST_APP_DSN": pg_server_dsn, "TEST_APP_NAME": app_name}
    cmd = [
        sys.executable, "-m", "gunicorn", "--config", str(tmp_path / "gunicorn.conf.py"),
        "--worker-class", "gthread", "--workers", "2", "--threads", "2", "--bind", f"127.0.0.1:{port}",
        "--pythonpath", str(tmp_path), "--log-level", "warning", "wsgiapp:app",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, f"gunicorn exited with {proc.returncode}"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "gunicorn did not listen in time"
                time.sleep(0.1)
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _workers(master: int) -> set[int]:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return {int(pid) for pid in children}


def _sessions(dsn: str, app_name: str) -> dict[int, Any]:
    conn = psycopg2.connect(dsn, connect_timeout=5)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pid, backend_start FROM pg_stat_activity WHERE application_name = %s", (app_name,))
            return {int(pid): start for pid, start in cur.fetchall()}
    finally:
        conn.close()


def _server_now(dsn: str) -> Any:
    conn = psycopg2.connect(dsn, connect_timeout=5)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT now()")
            row = cur.fetchone()
            assert row is not None
            return row[0]
    finally:
        conn.close()


@pytest.mark.no_pgbouncer
def test_sigusr2_to_the_workers_drains_their_pools(
    server: tuple[subprocess.Popen[bytes], str], pg_server_dsn: str, app_name: str
) -> None:
    proc, base = server
    failures: list[str] = []
    answered_by: set[int] = set()
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                with urllib.request.urlopen(base + "/pid", timeout=10) as response:
                    answered_by.add(json.load(response)["worker"])
            except (urllib.error.URLError, OSError) as exc:
                failures.append(repr(exc))

    clients = [threading.Thread(target=client, daemon=True) for _ in range(4)]
    for thread in clients:
        thread.start()
    deadline = time.monotonic() + 30
    while (
        len(workers := _workers(proc.pid)) < 2 or answered_by != workers or len(_sessions(pg_server_dsn, app_name)) < 2
    ):
        assert time.monotonic() < deadline, "both workers did not answer"
        time.sleep(0.05)
    before = _sessions(pg_server_dsn, app_name)

    signalled_at = _server_now(pg_server_dsn)
    for worker in workers:
        os.kill(worker, signal.SIGUSR2)

    deadline = time.monotonic() + 30
    while not (after := _sessions(pg_server_dsn, app_name)) or any(s <= signalled_at for s in after.values()):
        assert time.monotonic() < deadline, "sessions from before the signal still open"
        time.sleep(0.05)
    stop.set()
    for thread in clients:
        thread.join(15)
    assert not set(after) & set(before)
    assert failures == []
    assert _workers(proc.pid) == workers  # drained, not restarted
