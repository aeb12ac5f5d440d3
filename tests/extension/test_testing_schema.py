"""The pytest plugin's database for a test session: made with the user's schema, dropped afterwards,
and an error that says what to fix when it cannot be made."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
from psycopg2.extensions import connection, make_dsn

from flask_pgpool.testing import fresh_database


def exists(admin: connection, dsn: str) -> bool:
    name = psycopg2.extensions.parse_dsn(dsn)["dbname"]
    with admin.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        return cur.fetchone() is not None


def tables(dsn: str) -> list[str]:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")
            return [row[0] for row in cur.fetchall()]
    finally:
        conn.close()


@pytest.mark.no_pgbouncer
def test_every_form_of_schema_is_applied_once_and_the_database_dropped(
    tmp_path: Path, pg_server_dsn: str, admin: connection
) -> None:
    sql_file = tmp_path / "schema.sql"
    sql_file.write_text("CREATE TABLE from_file (id int);")
    calls = []

    def create(conn: connection) -> None:
        calls.append(conn.dsn)
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE from_function (id int)")

    with fresh_database(pg_server_dsn, ["CREATE TABLE from_text (id int);", sql_file, create]) as dsn:
        assert tables(dsn) == ["from_file", "from_function", "from_text"]
        assert len(calls) == 1
        # A connection left open (a pool the tests did not close) does not keep the database.
        left_open = psycopg2.connect(dsn)
    assert not exists(admin, dsn)
    left_open.close()


@pytest.mark.no_pgbouncer
def test_no_schema_gives_an_empty_database(pg_server_dsn: str, admin: connection) -> None:
    with fresh_database(pg_server_dsn) as dsn:
        assert tables(dsn) == []
    assert not exists(admin, dsn)


@pytest.mark.no_pgbouncer
def test_a_failing_schema_raises_and_drops_the_database(pg_server_dsn: str, admin: connection) -> None:
    prefix = f"docs_fail_{uuid.uuid4().hex[:8]}_"
    with pytest.raises(psycopg2.errors.SyntaxError), fresh_database(pg_server_dsn, "CREATE TABLEE oops", prefix=prefix):
        pass  # pragma: no cover - the schema fails before the block
    wrong = fresh_database(pg_server_dsn, 42, prefix=prefix)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"pgpool_schema must return SQL text.*got int"), wrong:
        pass  # pragma: no cover
    with admin.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_database WHERE starts_with(datname, %s)", (prefix,))
        assert cur.fetchone() == (0,)


@pytest.fixture
def role_without_createdb(admin: connection, pg_server_dsn: str) -> Iterator[str]:
    name = f"nocreatedb_{uuid.uuid4().hex[:8]}"
    with admin.cursor() as cur:
        cur.execute(f"CREATE ROLE {name} LOGIN PASSWORD 'pw-Secret-42' NOCREATEDB")
    yield make_dsn(pg_server_dsn, user=name, password="pw-Secret-42")
    with admin.cursor() as cur:
        cur.execute(f"DROP ROLE {name}")


@pytest.mark.no_pgbouncer
def test_a_role_that_cannot_create_databases_is_told_what_to_do(role_without_createdb: str) -> None:
    with pytest.raises(RuntimeError) as raised, fresh_database(role_without_createdb):
        pass  # pragma: no cover
    message = str(raised.value)
    assert "CREATEDB" in message and "PGPOOL_TEST_DSN" in message
    assert "pw-Secret-42" not in message


@pytest.mark.no_pgbouncer
def test_pgpool_database_fixture_in_a_test_session(tmp_path: Path, pg_server_dsn: str) -> None:
    (tmp_path / "conftest.py").write_text(
        textwrap.dedent(
            """
            import pytest

            @pytest.fixture(scope="session")
            def pgpool_schema():
                return "CREATE TABLE notes (id serial PRIMARY KEY, body text)"
            """
        )
    )
    (tmp_path / "test_session.py").write_text(
        textwrap.dedent(
            """
            import psycopg2

            def test_one(pgpool_database):
                with psycopg2.connect(pgpool_database) as conn, conn.cursor() as cur:
                    cur.execute("INSERT INTO notes (body) VALUES ('a') RETURNING id")
                    assert cur.fetchone() == (1,)

            def test_same_database_for_the_session(pgpool_database):
                # The schema was applied once: the row of test_one is still there.
                with psycopg2.connect(pgpool_database) as conn, conn.cursor() as cur:
                    cur.execute("SELECT count(*) FROM notes")
                    assert cur.fetchone() == (1,)
            """
        )
    )
    env = {**os.environ, "PGPOOL_TEST_DSN": pg_server_dsn}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={tmp_path / 'pt'}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout
