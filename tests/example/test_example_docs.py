"""The code samples of the docs pages on the example app, testing, production and troubleshooting work."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from psycopg2.extensions import connection, make_dsn
from support.http import body
from support.rst import DOCS, ROOT, code_blocks

from example_app import create_app, pgpool
from flask_pgpool import get_db

PAGES = ("example.rst", "testing.rst", "production.rst", "troubleshooting.rst")


def page(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def block_named(name: str, first_line: str) -> str:
    [block] = [b for b in code_blocks(page(name), "python") if b.startswith(first_line)]
    return block


@pytest.mark.parametrize("name", PAGES)
def test_pages_exist_and_python_samples_compile(name: str) -> None:
    for block in code_blocks(page(name), "python"):
        compile(block, f"docs/{name}", "exec")


@pytest.fixture
def app(pgpool_dsn: str) -> Iterator[Flask]:
    app = create_app({"TESTING": True, "PGPOOL_DSN": pgpool_dsn})
    yield app
    pgpool.close(app)


@pytest.mark.usefixtures("pgpool_transaction")
def test_curl_samples_of_the_example_app(client: FlaskClient) -> None:
    commands = [
        shlex.split(line.removeprefix("$ "))
        for line in code_blocks(page("example.rst"), "console")[-1].splitlines()
        if line.startswith("$ curl")
    ]
    statuses = []
    note_id = None
    for argv in commands:
        method, headers, data, url = "GET", {}, None, ""
        args = iter(argv[1:])
        for arg in args:
            if arg == "-X":
                method = next(args)
            elif arg == "-H":
                name, value = next(args).split(": ", 1)
                headers[name] = value
            elif arg == "-d":
                data = next(args)
            elif arg.startswith("http://127.0.0.1:5000/"):
                url = arg.removeprefix("http://127.0.0.1:5000")
            else:
                assert arg == "-s", f"docs/example.rst uses a curl option this test does not know: {arg}"
        if note_id is not None:
            url = url.replace("/api/notes/1", f"/api/notes/{note_id}")
        response = client.open(url, method=method, headers=headers, data=data)
        if method == "POST":
            note_id = body(response)["id"]
        statuses.append((method, response.status_code))
    assert statuses == [("POST", 201), ("GET", 200), ("PATCH", 200), ("PUT", 200), ("DELETE", 204), ("GET", 200)]


def test_testing_samples_pass(tmp_path: Path, pg_dsn: str) -> None:
    for name in ("conftest.py", "test_notes.py"):
        (tmp_path / name).write_text(block_named("testing.rst", f"# {name}"))
    env = {**os.environ, "PGPOOL_TEST_DSN": pg_dsn, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout


def test_troubleshooting_503_handler_is_used(make_app: Callable[..., Flask]) -> None:
    app = make_app(PGPOOL_MAXCONN=1, PGPOOL_TIMEOUT=0.2)
    exec(block_named("troubleshooting.rst", "@app.errorhandler(503)"), {"app": app})

    @app.get("/work")
    def work() -> str:
        get_db()
        return "done"

    pool = app.extensions["pgpool"].get_pool(app=app)
    held = pool.getconn()
    try:
        response = app.test_client().get("/work")
    finally:
        pool.putconn(held)
    assert response.status_code == 503
    assert response.json == {"error": "busy", "retry_after": 1}
    assert app.test_client().get("/work").text == "done"


def settings_samples() -> list[str]:
    return [
        block
        for block in code_blocks(page("troubleshooting.rst"), "python")
        if all(line.startswith("PGPOOL_") for line in block.splitlines())
    ]


def test_troubleshooting_settings_are_valid(make_app: Callable[..., Flask]) -> None:
    config: dict[str, Any] = {}
    for block in settings_samples():
        exec(block, {}, config)
    assert set(config) == {"PGPOOL_MAX_IDLE", "PGPOOL_PING_AFTER", "PGPOOL_CONNECT_ARGS"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        app = make_app(**config)
    pool = app.extensions["pgpool"].get_pool(app=app)
    assert (pool.max_idle, pool.ping_after) == (240, 10)


def test_troubleshooting_query_runs(admin: connection) -> None:
    [query] = re.findall(r"``(SELECT application_name[^`]*)``", page("troubleshooting.rst"))
    with admin.cursor() as cur:
        cur.execute(" ".join(query.split()))
        assert cur.fetchall()


@pytest.fixture
def database(admin: connection, pg_dsn: str) -> Iterator[str]:
    """A DSN of a new, empty database, dropped after the test."""
    name = f"docs_{uuid.uuid4().hex[:12]}"
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    yield make_dsn(pg_dsn, dbname=name)
    with admin.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_gunicorn_sample_serves_the_example_app(tmp_path: Path, database: str) -> None:
    config = tmp_path / "gunicorn.conf.py"
    config.write_text(block_named("production.rst", "# gunicorn.conf.py"))
    [command] = [
        line.removeprefix("$ ")
        for line in code_blocks(page("production.rst"), "console")[0].splitlines()
        if line.startswith("$ gunicorn")
    ]
    argv = shlex.split(command)
    assert argv[:3] == ["gunicorn", "-c", "gunicorn.conf.py"]
    port = free_port()
    # The sample as written, on a local port and with fewer workers for this small machine.
    argv = [sys.executable, "-m", "gunicorn", "-c", str(config), "--bind", f"127.0.0.1:{port}", "--workers", "2"]
    argv += shlex.split(command)[3:]
    env = {**os.environ, "PGPOOL_DSN": database}
    env.pop("DATABASE_URL", None)
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/", timeout=10) as response:
                    assert response.status == 200
                break
            except OSError:
                assert proc.poll() is None, "gunicorn exited"
                assert time.monotonic() < deadline, "gunicorn did not answer in 60 s"
                time.sleep(0.2)
        request = urllib.request.Request(
            f"{base}/api/notes", data=json.dumps({"title": "from gunicorn"}).encode(), method="POST"
        )
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 201
        with urllib.request.urlopen(f"{base}/api/notes", timeout=10) as response:
            assert [note["title"] for note in json.load(response)] == ["from gunicorn"]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        finally:
            proc.kill()
            _, stderr = proc.communicate()
    assert proc.returncode == 0, stderr
