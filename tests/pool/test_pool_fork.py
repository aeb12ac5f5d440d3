"""Behaviour 8: a pool used before a fork is never used, nor closed, by the child."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from psycopg2.extensions import connection
from support.netproxy import TcpProxy
from support.poolkit import via_proxy

pytestmark = pytest.mark.slow

# Runs in a fresh interpreter, so that the fork happens outside pytest.
FORK_SCRIPT = textwrap.dedent(
    """
    import atexit, json, os, sys
    from flask_pgpool import ConnectionPool

    dsn, app_name, ending = sys.argv[1:4]
    pool = ConnectionPool(1, 2, dsn, connect_args={"application_name": app_name})
    atexit.register(pool.closeall)  # what an app's exit hook does

    def backend(conn):
        with conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            return cur.fetchone()[0]

    conn = pool.getconn()
    parent_backend = backend(conn)
    pool.putconn(conn)

    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read_end)
        mine = pool.getconn()
        report = {"child_backend": backend(mine), "child_got_parents": mine is conn}
        pool.putconn(mine)
        os.write(write_end, json.dumps(report).encode())
        os.close(write_end)
        if ending == "closeall":
            pool.closeall()
            os._exit(0)
        sys.exit(0)  # runs the atexit hook in the child
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        report = json.loads(pipe.read())
    _, status = os.waitpid(child, 0)
    report["child_status"] = status
    again = pool.getconn()
    report["parent_same_connection"] = again is conn
    report["parent_backend_before"] = parent_backend
    report["parent_backend_after"] = backend(again)
    pool.putconn(again)
    print(json.dumps(report))
    """
)


@pytest.mark.parametrize("ending", ["closeall", "atexit"])
def test_child_gets_its_own_connection_and_spares_the_parents(
    tmp_path: Path, pg_dsn: str, app_name: str, ending: str
) -> None:
    script = tmp_path / "fork_script.py"
    script.write_text(FORK_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), pg_dsn, app_name, ending],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["child_status"] == 0
    assert not report["child_got_parents"]
    assert report["child_backend"] != report["parent_backend_before"]
    # The parent's session survived the child, its closeall and its exit.
    assert report["parent_same_connection"]
    assert report["parent_backend_after"] == report["parent_backend_before"]


APP_MODULE = textwrap.dedent(
    """
    import json, os
    from flask_pgpool import ConnectionPool

    pool = ConnectionPool(
        1, 4, os.environ["TEST_PG_DSN"], timeout=10,
        connect_args={"application_name": os.environ["TEST_APP_NAME"]},
    )

    def backend():
        conn = pool.getconn()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_backend_pid()")
                return cur.fetchone()[0]
        finally:
            pool.putconn(conn)

    MASTER_BACKEND = backend()  # the master (--preload) uses the pool before forking

    def app(environ, start_response):
        body = json.dumps(
            {"worker": os.getpid(), "backend": backend(), "master_backend": MASTER_BACKEND}
        ).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]
    """
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=15) as response:
        assert response.status == 200
        data: dict[str, Any] = json.loads(response.read())
        return data


def test_gunicorn_preload_workers_use_their_own_connections(
    tmp_path: Path, pg_dsn: str, app_name: str, admin: connection
) -> None:
    (tmp_path / "pool_app.py").write_text(APP_MODULE)
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    env = dict(os.environ, TEST_PG_DSN=pg_dsn, TEST_APP_NAME=app_name)
    command = [sys.executable, "-m", "gunicorn", "--preload", "--workers", "2", "--worker-class", "gthread"]
    command += ["--threads", "4", "--bind", f"127.0.0.1:{port}", "--chdir", str(tmp_path), "pool_app:app"]
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                _get(url)
                break
            except OSError:
                assert server.poll() is None, "gunicorn exited"
                assert time.monotonic() < deadline, "gunicorn did not start in 30 s"
                time.sleep(0.2)
        with ThreadPoolExecutor(8) as executor:
            replies = list(executor.map(lambda _: _get(url), range(80), timeout=60))
        assert len(replies) == 80
        master_backend = replies[0]["master_backend"]
        backends_of: dict[int, set[int]] = {}
        for reply in replies:
            backends_of.setdefault(reply["worker"], set()).add(reply["backend"])
        all_backends = [b for backends in backends_of.values() for b in backends]
        assert len(all_backends) == len(set(all_backends)), "two workers shared a connection"
        assert master_backend not in all_backends
        # The master's own session is still open: no worker closed it.
        with admin.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (master_backend,))
            row = cur.fetchone()
        assert row is not None and row[0] == 1
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            _, stderr = server.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            _, stderr = server.communicate(timeout=10)
    assert server.returncode == 0, stderr.decode(errors="replace")[-2000:]


# The child lets go of the sockets it inherited, without sending anything on them.
FD_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from flask_pgpool import ConnectionPool

    dsn, app_name = sys.argv[1:3]
    pool = ConnectionPool(0, 2, dsn, connect_args={"application_name": app_name})
    held, idle = pool.getconn(), pool.getconn()
    fds = [held.fileno(), idle.fileno()]

    def backend(conn):
        with conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            return cur.fetchone()[0]

    before = [backend(held), backend(idle)]
    held.rollback()
    pool.putconn(idle)
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read_end)
        seen = [os.readlink(f"/proc/self/fd/{fd}") for fd in fds]
        os.write(write_end, json.dumps(seen).encode())
        os.close(write_end)
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        seen = json.loads(pipe.read())
    os.waitpid(child, 0)
    again = pool.getconn()
    print(json.dumps({
        "child_fds": seen,
        "parent_sockets": [os.readlink(f"/proc/self/fd/{fd}") for fd in fds],
        "before": before,
        "after": [backend(held), backend(again)],
        "same": again is idle,
    }))
    """
)


def test_child_releases_the_inherited_sockets(tmp_path: Path, pg_dsn: str, app_name: str) -> None:
    script = tmp_path / "fd_script.py"
    script.write_text(FD_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), pg_dsn, app_name], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert all(target == "/dev/null" for target in report["child_fds"]), report
    assert all(target.startswith("socket:") for target in report["parent_sockets"]), report
    # Nothing was sent on them: the parent's sessions go on.
    assert report["same"] and report["after"] == report["before"]


# A fork while a background thread is still connecting: the connection
# becomes the parent's, so the child must not keep its socket either.
INFLIGHT_SCRIPT = textwrap.dedent(
    """
    import json, os, socket, sys, threading, time
    from flask_pgpool import ConnectionPool

    dsn, proxy_port = sys.argv[1], int(sys.argv[2])
    pool = ConnectionPool(0, 2, dsn, timeout=30)

    def sockets_to_proxy():
        found = []
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            try:
                sock = socket.socket(fileno=fd)
            except OSError:
                continue
            try:
                if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.getpeername()[1] == proxy_port:
                    found.append(fd)
            except OSError:
                pass
            finally:
                sock.detach()
        return found

    got = []
    checkout = threading.Thread(target=lambda: got.append(pool.getconn()))
    checkout.start()  # the pool opens a connection in a background thread, slowly (the proxy delays it)
    deadline = time.monotonic() + 20
    while not sockets_to_proxy() and time.monotonic() < deadline:
        time.sleep(0.005)
    connecting = bool(sockets_to_proxy()) and not got
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read_end)
        os.write(write_end, json.dumps(sockets_to_proxy()).encode())
        os.close(write_end)
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        in_child = json.loads(pipe.read())
    os.waitpid(child, 0)
    checkout.join(30)
    with got[0].cursor() as cur:
        cur.execute("SELECT 1")
        works = cur.fetchone() == (1,)
    pool.putconn(got[0])
    pool.closeall()
    print(json.dumps({"connecting_at_fork": connecting, "in_child": in_child, "parent_works": works}))
    """
)


def test_fork_during_a_background_connect_leaves_the_child_no_socket_of_it(
    tmp_path: Path, pg_dsn: str, proxy: TcpProxy
) -> None:
    proxy.slow(0.3)  # a connect of a few round trips takes seconds
    script = tmp_path / "inflight_script.py"
    script.write_text(INFLIGHT_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), via_proxy(pg_dsn, proxy), str(proxy.port)],
        capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["connecting_at_fork"], report
    assert report["in_child"] == [], report
    assert report["parent_works"], report
