"""The README is a short front page that says what the code does: its Quickstart runs, its
numbers are the committed benchmark run's, its commands and conftest are the documented ones."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from psycopg2.extensions import connection
from support.rst import DOCS, README, ROOT, code_blocks, list_table, load_extension, section

# The README is the front page: what it is, why, the two commands, links.
README_MAX_BYTES = 12 * 1024


@pytest.fixture
def schema(admin: connection) -> Iterator[str]:
    """A private schema with the Quickstart's ``notes`` table."""
    name = f"quickstart_{uuid.uuid4().hex[:10]}"
    with admin.cursor() as cur:
        cur.execute(f"CREATE SCHEMA {name}")
        cur.execute(f"CREATE TABLE {name}.notes (id serial PRIMARY KEY, body text NOT NULL)")
    yield name
    with admin.cursor() as cur:
        cur.execute(f"DROP SCHEMA {name} CASCADE")


@pytest.mark.no_pgbouncer  # configures the server session itself
def test_quickstart_runs(pg_dsn: str, schema: str, admin: connection) -> None:
    [code] = code_blocks(section(README, "Quickstart"), "python")
    namespace: dict[str, Any] = {"__name__": "quickstart"}
    exec(compile(code, f"{README}:Quickstart", "exec"), namespace)
    app = namespace["create_app"](
        {"TESTING": True, "PGPOOL_DSN": pg_dsn, "PGPOOL_CONNECT_ARGS": {"options": f"-c search_path={schema}"}}
    )
    try:
        client = app.test_client()
        assert client.get("/notes").json == []
        created = client.post("/notes", json={"body": "first note"})
        assert created.status_code == 201
        assert client.get("/notes").json == [{"id": created.json["id"], "body": "first note"}]
        # The POST committed: the row is visible outside the pool.
        with admin.cursor() as cur:
            cur.execute(f"SELECT body FROM {schema}.notes")
            assert cur.fetchall() == [("first note",)]
        stats = namespace["pgpool"].get_stats(app=app)
        assert (stats["pool_size"], stats["pool_available"], stats["connections_num"]) == (1, 1, 1)
    finally:
        namespace["pgpool"].close(app)


def test_quickstart_page_shows_the_same_code() -> None:
    [readme] = code_blocks(section(README, "Quickstart"), "python")
    [page] = code_blocks(section(DOCS / "quickstart.rst", "Quickstart"), "python")
    assert page == readme


def test_two_commands_are_literal_and_on_the_first_screen() -> None:
    text = README.read_text(encoding="utf-8")
    commands = ('pip install -e ".[embedded]" && flask --app example_app run', 'pip install -e ".[test]" && pytest')
    first_screen = "\n".join(text.splitlines()[:45])
    for command in commands:
        assert command in section(README, "Two commands")
        assert command in first_screen


def test_readme_is_a_short_front_page_not_a_log() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.encode()) <= README_MAX_BYTES
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b|\bUTC\b|MISSED|\brun \d\b", text)
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b|MISSED|\brun \d\b", (DOCS / "benchmarks.rst").read_text())


def test_readme_links_point_at_files_that_exist() -> None:
    for target in re.findall(r"`[^`<]+<([^>]+)>`_", README.read_text(encoding="utf-8")):
        if "://" not in target:
            assert (ROOT / target).is_file(), target


def test_comparison_numbers_are_the_committed_run() -> None:
    benchmarks = load_extension("pgpool_benchmarks")
    measured = {row["variant"]: row for row in benchmarks.summary(benchmarks.load())}
    table = list_table(section(README, "Compared with the alternatives"))
    header, rows = table[0], {row[0]: row[1:] for row in table[1:]}
    # README column -> the benchmark variant it reports.
    variants = {
        "flask-pgpool": "flask-pgpool (defaults)",
        "ThreadedConnectionPool recipe": "ThreadedConnectionPool recipe",
        "psycopg_pool (psycopg 3)": "psycopg_pool (psycopg 3)",
        "Flask-SQLAlchemy's pool (QueuePool, pre_ping)": "SQLAlchemy QueuePool pre_ping",
    }
    assert header[1:] == list(variants)
    for column, variant in enumerate(variants.values()):
        row = measured[variant]
        assert rows["Steady load, req/s (vs no pool)"][column] == f"{row['steady_rps']} ({row['vs_limit']})"
        assert rows["Worker CPU per request"][column] == f"{row['cpu_us']} µs"
        assert rows["Overload (16 threads, 4 connections): failed requests"][column] == row["overload_failed"]
        restart = "Database restart: failed once the server is back (busy / idle)"
        assert rows[restart][column] == row["restart_failed"]


def test_readme_conftest_is_the_documented_one() -> None:
    [readme] = code_blocks(section(README, "Use it in your own project"), "python")
    [page] = [b for b in code_blocks((DOCS / "your-project.rst").read_text(), "python") if b.startswith("# conftest")]
    assert readme == page


def test_readme_install_commands_are_the_documented_ones() -> None:
    readme = code_blocks(section(README, "Use it in your own project"), "console")
    page = "".join(code_blocks(section(DOCS / "your-project.rst", "Installing flask-pgpool"), "console"))
    assert len(readme) == 2
    for line in "".join(readme).splitlines():
        assert line in page
