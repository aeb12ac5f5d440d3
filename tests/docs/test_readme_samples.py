"""Every Python sample in the README is valid Python, and the self-contained ones run."""

from __future__ import annotations

import re
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest
from flask import Blueprint, Flask

from flask_pgpool import PgPool, get_db

README = Path(__file__).resolve().parents[2] / "README.rst"
_PYTHON_START = re.compile(r"^(import |from |@|def |class |app\.|[a-z_]+ = )")


def literal_blocks() -> list[tuple[str, str]]:
    """(section title, code) of every ``::`` and ``.. code-block:: python`` block."""
    lines = README.read_text().splitlines()
    blocks: list[tuple[str, str]] = []
    title = ""
    for i, line in enumerate(lines):
        if i + 1 < len(lines) and set(lines[i + 1]) <= {"=", "-"} and len(lines[i + 1]) >= len(line) > 0:
            title = line
        is_python = line.strip() == ".. code-block:: python"
        if not (is_python or (line.endswith("::") and not line.lstrip().startswith(".."))):
            continue
        indent = len(line) - len(line.lstrip())
        body: list[str] = []
        for following in lines[i + 1 :]:
            if following.strip() and len(following) - len(following.lstrip()) <= indent:
                break
            body.append(following)
        code = textwrap.dedent("\n".join(body)).strip()
        if code and (is_python or _PYTHON_START.match(code)):
            blocks.append((title, code + "\n"))
    return blocks


def block(title: str, contains: str) -> str:
    for section, code in literal_blocks():
        if section == title and contains in code:
            return code
    raise AssertionError(f"README.rst has no sample in {title!r} containing {contains!r}")


@pytest.mark.parametrize(("title", "code"), literal_blocks(), ids=lambda v: str(v)[:40])
def test_python_sample_compiles(title: str, code: str) -> None:
    compile(code, f"README.rst ({title})", "exec")


def test_there_are_samples() -> None:
    assert len(literal_blocks()) >= 10


def test_pool_without_flask_sample_runs(pg_dsn: str) -> None:
    code = block("Without Flask", "ConnectionPool(")
    code = code.replace('"postgresql://app@localhost/app"', repr(pg_dsn))
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.rst (Without Flask)", "exec"), namespace)
    assert namespace["pool"].closed


@pytest.mark.no_pgbouncer  # kills or configures the server session itself
def test_several_databases_sample_runs(pg_dsn: str, admin: Any) -> None:
    code = block("Several databases", "PGPOOL_BINDS=")
    # Every database of the sample is the test server, in a schema of this test.
    for placeholder in re.findall(r'"postgres(?:ql)?://[^"]+"', code):
        code = code.replace(placeholder, repr(pg_dsn))
    schema = f"sample_{uuid.uuid4().hex[:10]}"
    with admin.cursor() as cur:
        cur.execute(f"CREATE SCHEMA {schema}")
        cur.execute(f"CREATE TABLE {schema}.orders (id int)")
    app = Flask(__name__)
    bp = Blueprint("sample", __name__)
    namespace: dict[str, Any] = {"app": app, "bp": bp, "get_db": get_db}
    exec(compile(code, "README.rst (Several databases)", "exec"), namespace)
    app.config["PGPOOL_CONNECT_ARGS"] = {"options": f"-c search_path={schema}"}
    pgpool = PgPool(app)
    app.register_blueprint(bp)
    try:
        response = app.test_client().get("/stats")
        assert response.status_code == 200
        assert response.json == {"orders": 0}
        assert set(pgpool.get_pools(app)) == {"default", "replica", "reports"}
        assert pgpool.get_pool("replica", app).read_only
    finally:
        pgpool.close(app)
        with admin.cursor() as cur:
            cur.execute(f"DROP SCHEMA {schema} CASCADE")
