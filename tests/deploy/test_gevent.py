"""gevent: waiting on the database lets the other greenlets run.

psycopg2 blocks the whole process unless a wait callback hands its waits to
gevent's hub. The pool installs one when gevent has patched the process,
refuses a half-patched process, and keeps libpq's ``connect_timeout`` (which
libpq applies only to blocking connects). The scripts run in fresh
interpreters, so that gevent patches nothing in pytest's.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.wsgiserver import free_port, load, max_overlap, running

# Looked up, not imported: gevent stays out of pytest's own interpreter.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("gevent") is None, reason="gevent is not installed (pip install -e '.[servers]')"
    ),
]

REQUESTS = 100
SLEEP = 0.2
MAXCONN = 10


def _run_script(tmp_path: Path, source: str, *args: str, timeout: float = 60) -> dict[str, Any]:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(source))
    done = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=timeout, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("preload", [False, True], ids=["app-loaded-in-worker", "preload"])
def test_slow_queries_do_not_block_other_requests(
    preload: bool, pg_server_dsn: str, app_name: str, tmp_path: Path
) -> None:
    if importlib.util.find_spec("gunicorn") is None:
        pytest.skip("gunicorn is not installed (pip install -e '.[servers]')")
    port = free_port()
    cmd = [
        sys.executable, "-m", "gunicorn", "--worker-class", "gevent", "--workers", "1",
        "--worker-connections", str(REQUESTS + 10), "--bind", f"127.0.0.1:{port}",
        "--graceful-timeout", "10", "--log-level", "warning", "served_app:app",
    ]  # fmt: skip
    if preload:
        cmd.insert(-1, "--preload")
    env = {"SERVED_DSN": pg_server_dsn, "SERVED_APP_NAME": app_name, "SERVED_MAXCONN": str(MAXCONN)}
    with running("gunicorn-gevent", cmd, port=port, env=env, cwd=tmp_path) as server:
        result = load(f"{server.url}/work?sleep={SLEEP}", requests=REQUESTS, concurrency=REQUESTS, timeout=40)
        assert result.failures == [], f"{result.failures[:3]}\n{server.output()}"
        # Blocking, the queries would run one at a time: 100 x 0.2 s = 20 s. Cooperating, ten at a
        # time (maxconn): about 2 s. The overlap is the proof; the time bound leaves room for a busy machine.
        assert max_overlap(result.answers) >= MAXCONN // 2
        assert result.seconds < 12, f"{REQUESTS} requests took {result.seconds:.1f} s"
        assert len({a.backend for a in result.answers}) <= MAXCONN


INSTALL_SCRIPT = """
    import json, sys
    from gevent import monkey

    monkey.patch_all({patch_args})

    import psycopg2.extensions
    from flask import Flask

    {before}
    from flask_pgpool import PgPool

    app = Flask(__name__)
    app.config["PGPOOL_DSN"] = sys.argv[1]
    try:
        PgPool(app)
    except Exception as exc:
        print(json.dumps({{"error": type(exc).__name__, "message": str(exc)}}))
    else:
        callback = psycopg2.extensions.get_wait_callback()
        callback = getattr(callback, "__wrapped__", callback)  # kept, with connects bounded around it
        print(json.dumps({{"callback": getattr(callback, "__qualname__", None),
                           "module": getattr(callback, "__module__", None)}}))
"""


def test_patched_process_gets_the_wait_callback_at_init_app(pg_server_dsn: str, tmp_path: Path) -> None:
    result = _run_script(tmp_path, INSTALL_SCRIPT.format(patch_args="", before=""), pg_server_dsn)
    assert result == {"callback": "gevent_wait", "module": "flask_pgpool._green"}


def test_a_wait_callback_already_set_is_kept(pg_server_dsn: str, tmp_path: Path) -> None:
    before = "psycopg2.extensions.set_wait_callback(__import__('psycopg2.extras').extras.wait_select)"
    result = _run_script(tmp_path, INSTALL_SCRIPT.format(patch_args="", before=before), pg_server_dsn)
    assert result == {"callback": "wait_select", "module": "psycopg2.extras"}


def test_socket_patched_without_threading_is_refused_at_init_app(pg_server_dsn: str, tmp_path: Path) -> None:
    result = _run_script(tmp_path, INSTALL_SCRIPT.format(patch_args="thread=False", before=""), pg_server_dsn)
    assert result["error"] == "GeventSetupError"
    assert "gevent.monkey.patch_all()" in result["message"]
    assert "thread" in result["message"]


def test_without_gevent_nothing_is_installed(pg_server_dsn: str, tmp_path: Path) -> None:
    source = INSTALL_SCRIPT.replace("from gevent import monkey", "").replace("monkey.patch_all({patch_args})", "")
    result = _run_script(tmp_path, source.format(before=""), pg_server_dsn)
    assert result == {"callback": None, "module": None}


POOL_SCRIPT = """
    import json, sys, time
    from gevent import monkey

    monkey.patch_all()

    import gevent
    import psycopg2
    from flask_pgpool import ConnectionPool

    dsn, admin_dsn, app_name = sys.argv[1:4]
    pool = ConnectionPool(1, 4, dsn, connect_args={{"application_name": app_name}}, timeout=10)

    def backend(conn):
        with conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            return cur.fetchone()[0]

    {body}
"""

def _pool_script(body: str) -> str:
    return textwrap.dedent(POOL_SCRIPT).format(body=textwrap.dedent(body))


HEALTH_BODY = """
    conns = [pool.getconn() for _ in range(4)]
    before = {backend(c) for c in conns}
    for c in conns:
        pool.putconn(c)
    admin = psycopg2.connect(admin_dsn)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", (app_name,))
        while True:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (app_name,))
            if cur.fetchone()[0] == 0:
                break
            time.sleep(0.02)
    # Every idle connection is dead: each checkout must find out without a failed query.
    after = set()
    for _ in range(4):
        conn = pool.getconn()
        after.add(backend(conn))
        pool.putconn(conn)
    stats = pool.get_stats()
    pool.closeall()
    print(json.dumps({"reused_dead": len(before & after), "lost": stats["connections_lost"]}))
"""


def test_health_check_finds_killed_sessions_under_gevent(pg_server_dsn: str, app_name: str, tmp_path: Path) -> None:
    result = _run_script(tmp_path, _pool_script(HEALTH_BODY), pg_server_dsn, pg_server_dsn, app_name)
    assert result["reused_dead"] == 0
    assert result["lost"] >= 1


CONNECT_TIMEOUT_BODY = """
    ticks = []
    ticker = gevent.spawn(lambda: [ticks.append(gevent.sleep(0.1)) for _ in range(1000)])
    started = time.monotonic()
    try:
        psycopg2.connect(dsn, connect_timeout=2)
    except psycopg2.OperationalError as exc:
        error = str(exc)
    else:
        error = None
    elapsed = time.monotonic() - started
    ticker.kill()
    print(json.dumps({"error": error, "elapsed": elapsed, "ticks": len(ticks)}))
"""


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP port that accepts connections and never answers: a hung server."""
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield f"host=127.0.0.1 port={sock.getsockname()[1]} dbname=x user=x"
    finally:
        sock.close()


def test_connect_timeout_still_bounds_a_connect_under_gevent(
    silent_server: str, pg_server_dsn: str, app_name: str, tmp_path: Path
) -> None:
    result = _run_script(
        tmp_path, _pool_script(CONNECT_TIMEOUT_BODY), silent_server, pg_server_dsn, app_name, timeout=30
    )
    assert result["error"] is not None and "timeout expired" in result["error"]
    assert 1.5 <= result["elapsed"] < 10
    # The other greenlets ran while the connect waited.
    assert result["ticks"] >= 5


FORK_THEN_PATCH_SCRIPT = """
    import faulthandler, json, os, sys
    import gevent  # as in a gunicorn master, which imports its gevent worker class before forking
    from flask_pgpool import ConnectionPool

    dsn, app_name = sys.argv[1:3]
    pool = ConnectionPool(1, 2, dsn, connect_args={"application_name": app_name}, timeout=10)
    # Used before the fork: the parent has connections, a housekeeper and a watchdog thread.
    conn = pool.getconn()
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
    pool.putconn(conn)  # rolled back under a watchdog

    child = os.fork()
    if child == 0:
        # What a gunicorn --preload gevent worker does: patch after the fork.
        faulthandler.dump_traceback_later(20, exit=True)  # a deadlock fails instead of hanging
        from gevent import monkey

        monkey.patch_all()

        def work(i):
            c = pool.getconn()
            with c.cursor() as cur:
                cur.execute("SELECT pg_sleep(0.1)")
            pool.putconn(c)  # an open transaction: rolled back under a watchdog
            return i

        jobs = [gevent.spawn(work, i) for i in range(8)]
        gevent.joinall(jobs, timeout=15)
        print(json.dumps({"done": sum(1 for j in jobs if j.successful()),
                          "errors": [repr(j.exception) for j in jobs if j.exception]}), flush=True)
        pool.closeall()
        os._exit(0)
    _, status = os.waitpid(child, 0)
    pool.closeall()
    sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_a_pool_used_before_fork_works_in_a_child_that_gevent_patched(
    pg_server_dsn: str, app_name: str, tmp_path: Path
) -> None:
    result = _run_script(tmp_path, FORK_THEN_PATCH_SCRIPT, pg_server_dsn, app_name)
    assert result == {"done": 8, "errors": []}


LATE_PATCH_SCRIPT = """
    import faulthandler, json, sys, time
    from flask import Flask
    from flask_pgpool import PgPool, get_db

    faulthandler.dump_traceback_later(40, exit=True)  # a deadlock fails instead of hanging
    dsn, app_name, use_before = sys.argv[1], sys.argv[2], sys.argv[3] == "used"

    # The app and its pool are made before gevent patches anything, as in a
    # script that imports the app, then patches, then serves with gevent.pywsgi.
    app = Flask(__name__)
    app.config.update(PGPOOL_DSN=dsn, PGPOOL_MAXCONN=10, PGPOOL_TIMEOUT=20,
                      PGPOOL_CONNECT_ARGS={"application_name": app_name})
    PgPool(app)

    @app.get("/sleep")
    def sleep():
        with get_db().cursor() as cur:
            cur.execute("SELECT pg_sleep(0.3)")
        return "ok"

    if use_before:  # a query at import time: the pool has connections, threads and a watchdog already
        with app.test_request_context():
            with get_db().cursor() as cur:
                cur.execute("SELECT 1")

    from gevent import monkey

    monkey.patch_all()

    import gevent

    def request(i):
        return app.test_client().get("/sleep").status_code

    ticks = []
    ticker = gevent.spawn(lambda: [ticks.append(gevent.sleep(0.05)) for _ in range(10000)])
    started = time.monotonic()
    jobs = [gevent.spawn(request, i) for i in range(20)]
    gevent.joinall(jobs, timeout=30)
    elapsed = time.monotonic() - started
    ticker.kill()
    print(json.dumps({"ok": sum(1 for j in jobs if j.value == 200), "elapsed": elapsed, "ticks": len(ticks),
                      "errors": [repr(j.exception) for j in jobs if j.exception]}), flush=True)
"""


@pytest.mark.parametrize("use_before", ["unused", "used"])
def test_an_app_made_before_gevent_patched_the_process_does_not_block_it(
    use_before: str, pg_server_dsn: str, app_name: str, tmp_path: Path
) -> None:
    result = _run_script(tmp_path, LATE_PATCH_SCRIPT, pg_server_dsn, app_name, use_before, timeout=90)
    assert result["errors"] == [] and result["ok"] == 20
    # Blocking, the 20 queries would run one at a time (6 s) and nothing else
    # would run meanwhile; cooperating, ten at a time on maxconn=10 (0.6 s).
    assert result["elapsed"] < 4, result
    assert result["ticks"] >= 5, result


OWN_CALLBACK_SCRIPT = """
    import json, socket, sys, time

    which = sys.argv[1]
    if which == "psycogreen":
        from gevent import monkey

        monkey.patch_all()
        from gevent.socket import wait_read, wait_write
        import psycopg2.extensions as ext

        def wait(conn):  # what psycogreen.gevent.patch_psycopg() installs: waits without a limit
            while True:
                state = conn.poll()
                if state == ext.POLL_OK:
                    break
                elif state == ext.POLL_READ:
                    wait_read(conn.fileno())
                elif state == ext.POLL_WRITE:
                    wait_write(conn.fileno())

        ext.set_wait_callback(wait)
    else:
        import psycopg2.extensions, psycopg2.extras

        psycopg2.extensions.set_wait_callback(psycopg2.extras.wait_select)

    from flask_pgpool import ConnectionPool

    # A server that accepts connections and never answers.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    pool = ConnectionPool(1, 2, f"host=127.0.0.1 port={silent.getsockname()[1]} dbname=x user=x",
                          timeout=1, connect_timeout=2)
    started = time.monotonic()
    try:
        pool.getconn()
    except Exception as exc:
        error = type(exc).__name__
    checkout = time.monotonic() - started
    # The background connect must end too, and give its slot back.
    while time.monotonic() - started < 20 and pool.get_stats()["connections_errors"] == 0:
        time.sleep(0.05)
    ended = time.monotonic() - started
    stats = pool.get_stats()
    print(json.dumps({"error": error, "checkout": checkout, "connect_ended": ended,
                      "errors": stats["connections_errors"], "size": stats["pool_size"]}))
"""


@pytest.mark.parametrize("callback", ["psycogreen", "wait_select"])
def test_connect_timeout_bounds_a_connect_through_the_users_wait_callback(callback: str, tmp_path: Path) -> None:
    result = _run_script(tmp_path, OWN_CALLBACK_SCRIPT, callback, timeout=60)
    assert result["error"] == "PoolTimeout"
    assert result["checkout"] < 5, result
    # connect_timeout=2: the connect ends then, not never.
    assert result["errors"] == 1 and result["size"] == 0, result
    assert result["connect_ended"] < 8, result


INTERRUPTED_SCRIPT = """
    import json, sys, time
    from gevent import monkey

    monkey.patch_all()
    import gevent
    import psycopg2
    import psycopg2.extensions as ext

    dsn, app_name, which = sys.argv[1:4]
    if which == "psycogreen":
        from gevent.socket import wait_read, wait_write

        def wait(conn):  # what psycogreen.gevent.patch_psycopg() installs
            while True:
                state = conn.poll()
                if state == ext.POLL_OK:
                    break
                elif state == ext.POLL_READ:
                    wait_read(conn.fileno())
                elif state == ext.POLL_WRITE:
                    wait_write(conn.fileno())

        ext.set_wait_callback(wait)

    from flask_pgpool import ConnectionPool

    pool = ConnectionPool(1, 2, dsn, connect_args={"application_name": app_name})
    conn = pool.getconn()

    def slow():
        with conn.cursor() as cur:
            cur.execute("SELECT pg_sleep(60)")

    worker = gevent.spawn(slow)
    gevent.sleep(0.5)
    worker.kill(gevent.Timeout)  # a request time limit, or a worker killing its greenlets at shutdown
    pool.putconn(conn)
    admin = psycopg2.connect(dsn)
    admin.autocommit = True
    started = time.monotonic()
    with admin.cursor() as cur:
        while True:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND state = 'active'",
                        (app_name,))
            running = cur.fetchone()[0]
            if not running or time.monotonic() - started > 10:
                break
            time.sleep(0.05)
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", (app_name,))
    pool.closeall()
    print(json.dumps({"running": running}))
"""


@pytest.mark.parametrize("callback", ["flask-pgpool", "psycogreen"])
def test_a_query_whose_greenlet_is_killed_is_cancelled_on_the_server(
    callback: str, pg_server_dsn: str, app_name: str, tmp_path: Path
) -> None:
    result = _run_script(tmp_path, INTERRUPTED_SCRIPT, pg_server_dsn, app_name, callback, timeout=60)
    # psycopg2 closes the connection when the wait is interrupted; the server would run the query to its end.
    assert result == {"running": 0}
