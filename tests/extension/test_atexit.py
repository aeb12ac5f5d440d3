"""At interpreter exit the pools are closed; a forked child never closes its parent's connections.

Each test runs a small script in a fresh interpreter, since atexit hooks run
only when an interpreter ends.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

COMMON = """
import atexit, json, os, sys
from flask import Flask
from flask_pgpool import PgPool, get_db

def backend_pid(conn):
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        return cur.fetchone()[0]

def emit(**facts):
    print(json.dumps(facts), flush=True)

app = Flask("exiting_app")
app.config["PGPOOL_DSN"] = os.environ["TEST_DSN"]
app.config["PGPOOL_CONNECT_ARGS"] = {"application_name": os.environ["TEST_APP_NAME"]}
"""


def run_script(tmp_path: Path, body: str, pg_dsn: str, app_name: str, **env: str) -> tuple[list[dict[str, Any]], str]:
    script = tmp_path / "script.py"
    script.write_text(COMMON + textwrap.dedent(body))
    done = subprocess.run(
        [sys.executable, str(script)],
        env={**os.environ, "TEST_DSN": pg_dsn, "TEST_APP_NAME": app_name, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()], done.stderr


EXIT_AFTER_A_REQUEST = """
seen = {}

def after_flask_pgpool():
    # Registered before init_app, so it runs after flask-pgpool's hook (atexit is LIFO).
    pool = seen["pool"]
    emit(closed=bool(pool.closed), conn_closed=seen["conn"].closed, stats=pool.get_stats())

atexit.register(after_flask_pgpool)
ext = PgPool(app)
with app.app_context():
    conn = get_db()
    backend_pid(conn)
seen["pool"], seen["conn"] = ext.get_pool(app=app), conn
emit(closed=bool(seen["pool"].closed), idle=seen["pool"].get_stats()["pool_available"])
if os.environ.get("CLOSE_FIRST"):
    ext.close(app)
"""


@pytest.mark.parametrize("close_first", ["", "1"], ids=["atexit-only", "closed-before-exit"])
def test_pools_are_closed_at_exit(tmp_path: Path, pg_dsn: str, app_name: str, close_first: str) -> None:
    (before, after), stderr = run_script(tmp_path, EXIT_AFTER_A_REQUEST, pg_dsn, app_name, CLOSE_FIRST=close_first)
    assert before == {"closed": False, "idle": 1}
    assert after["closed"] is True
    assert after["conn_closed"] != 0  # the pooled connection was closed, not just dropped
    assert after["stats"]["pool_size"] == 0
    # Closing twice is harmless and the hook never raises.
    assert stderr == ""


FORK_A_WORKER = """
ext = PgPool(app)
pool = ext.get_pool(app=app)
held = pool.getconn()                      # checked out at the fork, inside a transaction
held_pid = backend_pid(held)
with app.app_context():
    idle_pid = backend_pid(get_db())       # given back: idle in the pool at the fork
sys.stdout.flush()

child = os.fork()
if child == 0:
    # A worker: serves a request with a connection of its own, then exits
    # normally, running the atexit hooks it inherited.
    with app.app_context():
        emit(who="child", backend=backend_pid(get_db()), stats=ext.get_stats(app=app))
    sys.exit(0)

_, status = os.waitpid(child, 0)
with app.app_context():
    conn = get_db()
    emit(who="parent", status=status, idle_backend=backend_pid(conn), held_backend=backend_pid(held),
         idle_pid=idle_pid, held_pid=held_pid, stats=ext.get_stats(app=app))
pool.putconn(held)
"""


@pytest.mark.no_pgbouncer  # kills or configures the server session itself
def test_forked_child_exit_leaves_the_parent_connections_working(tmp_path: Path, pg_dsn: str, app_name: str) -> None:
    (child, parent), stderr = run_script(tmp_path, FORK_A_WORKER, pg_dsn, app_name)
    assert child["who"] == "child"
    assert parent["who"] == "parent"
    assert parent["status"] == 0
    # The child used a connection of its own, from an empty pool.
    assert child["backend"] not in (parent["idle_pid"], parent["held_pid"])
    assert child["stats"]["requests_num"] == 1
    # After the child exited, both of the parent's connections still work: same server sessions.
    assert parent["idle_backend"] == parent["idle_pid"]
    assert parent["held_backend"] == parent["held_pid"]
    assert parent["idle_pid"] != parent["held_pid"]
    assert parent["stats"]["connections_lost"] == 0
    assert stderr == ""


FORK_WORKERS = """
import time

app.config["PGPOOL_MINCONN"] = 1
ext = PgPool(app)
with app.app_context():
    backend_pid(get_db())
sys.stdout.flush()
for _ in range(int(os.environ["WORKERS"])):
    child = os.fork()
    if child == 0:
        with app.app_context():
            backend_pid(get_db())
        time.sleep(0.05)  # time for the pool's background thread to top up to minconn
        emit(connections_num=ext.get_stats(app=app)["connections_num"])
        os._exit(0)
    os.waitpid(child, 0)
"""


def test_first_request_in_a_forked_worker_opens_one_connection(tmp_path: Path, pg_dsn: str, app_name: str) -> None:
    # The pool's minconn top-up must not race the first checkout and open a second connection.
    reports, _ = run_script(tmp_path, FORK_WORKERS, pg_dsn, app_name, WORKERS="10")
    assert [r["connections_num"] for r in reports] == [1] * 10


EXIT_DURING_A_QUERY = """
import threading, time
import psycopg2

@app.get("/slow")
def slow():
    with get_db().cursor() as cur:
        cur.execute("SELECT pg_sleep(60)")
    return "done"

PgPool(app)
# A request still running at exit, in a daemon thread (as waitress's are).
threading.Thread(target=lambda: app.test_client().get("/slow"), daemon=True).start()
admin = psycopg2.connect(os.environ["TEST_DSN"])
admin.autocommit = True
deadline = time.monotonic() + 20
with admin.cursor() as cur:
    while time.monotonic() < deadline:
        cur.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND query LIKE %s",
                    (os.environ["TEST_APP_NAME"], "%pg_sleep(60)%"))
        if cur.fetchone()[0]:
            break
        time.sleep(0.02)
admin.close()
emit(running=True)
"""


@pytest.mark.no_pgbouncer  # looks the query up in pg_stat_activity by application_name
def test_a_query_running_at_exit_is_cancelled(tmp_path: Path, pg_dsn: str, app_name: str) -> None:
    import time

    import psycopg2

    admin = psycopg2.connect(pg_dsn)
    admin.autocommit = True
    try:
        (report,), _ = run_script(tmp_path, EXIT_DURING_A_QUERY, pg_dsn, app_name)
        assert report == {"running": True}
        # Closing the socket does not stop a query on the server: the exit hook cancels it.
        deadline = time.monotonic() + 10
        with admin.cursor() as cur:
            while True:
                cur.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND state = 'active'",
                    (app_name,),
                )
                running = cur.fetchone()
                if running == (0,) or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
        assert running == (0,), "the query went on running on the server after the process exited"
    finally:
        with admin.cursor() as cur:
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", (app_name,)
            )
        admin.close()
