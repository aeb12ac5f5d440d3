"""The README says what the code does: its Quickstart runs, its configuration table is complete."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from psycopg2.extensions import connection

from flask_pgpool._config import KNOWN_KEYS

README = Path(__file__).resolve().parents[2] / "README.rst"


def section(title: str) -> str:
    """The text of a top-level README section (title underlined with '=')."""
    text = README.read_text()
    match = re.search(rf"^{re.escape(title)}\n=+\n(.*?)(?=^[^\n]+\n=+\n|\Z)", text, re.M | re.S)
    assert match, f"README.rst has no section {title!r}"
    return match.group(1)


def first_python_block(text: str) -> str:
    """The first ``.. code-block:: python`` in ``text``, dedented."""
    lines = text.splitlines()
    start = lines.index(".. code-block:: python") + 1
    block: list[str] = []
    for line in lines[start:]:
        if line and not line.startswith("    "):
            break
        block.append(line[4:])
    return "\n".join(block).strip() + "\n"


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


@pytest.mark.no_pgbouncer  # kills or configures the server session itself
def test_quickstart_runs(pg_dsn: str, schema: str, admin: connection) -> None:
    code = first_python_block(section("Quickstart"))
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


def test_configuration_table_lists_every_key() -> None:
    table = section("Configuration")
    documented = set(re.findall(r"^   \* - ``(PGPOOL_[A-Z_]+)``", table, re.M))
    assert documented == KNOWN_KEYS
    assert "``DATABASE_URL``" in table


def test_two_commands_are_literal() -> None:
    text = section("Two commands")
    assert 'pip install -e ".[embedded]" && flask --app example_app run' in text
    assert 'pip install -e ".[test]" && pytest' in text
