"""The configuration and multi-host pages say what the code does: their samples compile, the
self-contained ones run, and the messages they quote are the ones users get."""

from __future__ import annotations

import logging
import re
import textwrap
import warnings
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from flask_pgpool import ConfigError, PgPool, PgPoolConfigWarning, get_db

DOCS = Path(__file__).resolve().parents[2] / "docs"
PAGES = ["configuration.rst", "multihost.rst"]


def code_blocks(page: str, language: str) -> list[tuple[str, str]]:
    """(section title, code) of every ``.. code-block:: <language>`` of a page."""
    lines = (DOCS / page).read_text().splitlines()
    blocks: list[tuple[str, str]] = []
    title = ""
    for i, line in enumerate(lines):
        if i + 1 < len(lines) and set(lines[i + 1]) <= {"=", "-"} and len(lines[i + 1]) >= len(line) > 0:
            title = line
        if line.strip() != f".. code-block:: {language}":
            continue
        body: list[str] = []
        for following in lines[i + 1 :]:
            if following.strip() and not following.startswith("    "):
                break
            body.append(following)
        blocks.append((title, textwrap.dedent("\n".join(body)).strip() + "\n"))
    return blocks


def block(page: str, language: str, title: str, contains: str) -> str:
    for section, code in code_blocks(page, language):
        if section == title and contains in code:
            return code
    raise AssertionError(f"{page} has no {language} block in {title!r} containing {contains!r}")


SAMPLES = [(page, title, code) for page in PAGES for title, code in code_blocks(page, "python")]


@pytest.mark.parametrize(("page", "title", "code"), SAMPLES, ids=[f"{p}:{t}" for p, t, _ in SAMPLES])
def test_python_sample_compiles(page: str, title: str, code: str) -> None:
    compile(code, f"{page} ({title})", "exec")


def test_rows_by_column_name_sample_runs(pg_dsn: str, admin: Any) -> None:
    code = block("configuration.rst", "python", "Rows by column name", "RealDictCursor")
    literal = '"postgresql://app:secret@localhost:5432/app"'
    assert literal in code
    namespace: dict[str, Any] = {"__name__": "rows_sample"}
    exec(compile(code.replace(literal, repr(pg_dsn)), "configuration.rst", "exec"), namespace)
    app: Flask = namespace["app"]
    try:
        with admin.cursor() as cur:
            cur.execute("SELECT current_user, current_database()")
            role, database = cur.fetchone()
        assert app.test_client().get("/me").json == {"role": role, "database": database}
    finally:
        app.extensions["pgpool"].close(app)


def test_logging_connection_sample_runs(pg_dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    code = block("configuration.rst", "python", "Rows by column name", "LoggingConnection")
    app = Flask("logging_sample")
    app.config["PGPOOL_DSN"] = pg_dsn
    exec(compile(code, "configuration.rst", "exec"), {"app": app})
    PgPool(app)
    try:
        with caplog.at_level(logging.DEBUG, logger="myapp.sql"), app.app_context(), get_db().cursor() as cur:
            cur.execute("SELECT 'logged' AS what")
        logged = [r.getMessage() for r in caplog.records if r.name == "myapp.sql"]
        assert len(logged) == 1 and "SELECT 'logged' AS what" in logged[0]
        # The status command's own queries work, and stay out of the app's SQL log.
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="myapp.sql"):
            result = app.test_cli_runner().invoke(args=["pgpool-status"])
        assert result.exit_code == 0, result.output
        assert "capacity" in result.output
        assert not [r for r in caplog.records if r.name == "myapp.sql"]
    finally:
        app.extensions["pgpool"].close(app)


def test_the_quoted_refusal_is_the_real_one() -> None:
    quoted = block("configuration.rst", "text", "Passwords in connection strings", "raw '@'")
    app = Flask("refusal")
    app.config["PGPOOL_DSN"] = "postgresql://app:p@ss@db/app"
    with pytest.raises(ConfigError) as info:
        PgPool(app)
    assert " ".join(quoted.split()) == f"flask_pgpool.ConfigError: {info.value}"


def test_the_quoted_warning_is_the_real_one() -> None:
    quoted = block("configuration.rst", "text", "Keys that look like ours", "did you mean")
    key = re.search(r"unknown config key (\S+);", quoted)
    assert key is not None
    app = Flask("near_miss")
    app.config.update(PGPOOL_DSN="dbname=app", **{key.group(1): 5})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        PgPool(app).close(app)
    assert [f"PgPoolConfigWarning: {w.message}" for w in caught if w.category is PgPoolConfigWarning] == [
        quoted.strip()
    ]
