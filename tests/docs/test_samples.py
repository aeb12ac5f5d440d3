"""Every Python sample of the README and the docs pages is valid Python, and the self-contained ones run."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from flask import Blueprint, Flask
from support.rst import DOCS, ROOT, pages, python_samples

from flask_pgpool import PgPool, get_db

SAMPLES = [(path, title, code) for path in pages() for title, code in python_samples(path)]


def sample(page: str, title: str, contains: str) -> str:
    for path, section, code in SAMPLES:
        if path == DOCS / page and section == title and contains in code:
            return code
    raise AssertionError(f"docs/{page} has no sample in {title!r} containing {contains!r}")


@pytest.mark.parametrize(
    ("path", "title", "code"),
    SAMPLES,
    ids=[f"{path.relative_to(ROOT)}:{title}:{i}" for i, (path, title, _) in enumerate(SAMPLES)],
)
def test_python_sample_compiles(path: Any, title: str, code: str) -> None:
    compile(code, f"{path.name} ({title})", "exec")


def test_there_are_samples() -> None:
    assert len(SAMPLES) >= 20


def test_pool_without_flask_sample_runs(pg_dsn: str) -> None:
    code = sample("behaviour.rst", "Without Flask", "ConnectionPool(")
    code = code.replace('"postgresql://app@localhost/app"', repr(pg_dsn))
    namespace: dict[str, Any] = {}
    exec(compile(code, "behaviour.rst (Without Flask)", "exec"), namespace)
    assert namespace["pool"].closed


@pytest.mark.no_pgbouncer  # configures the server session itself
def test_several_databases_sample_runs(pg_dsn: str, admin: Any) -> None:
    code = sample("production.rst", "Several databases", "PGPOOL_BINDS=")
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
    exec(compile(code, "production.rst (Several databases)", "exec"), namespace)
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


def test_the_troubleshooting_503_handler_keeps_retry_after(make_app: Callable[..., Flask]) -> None:
    [code] = [code for title, code in python_samples(DOCS / "troubleshooting.rst") if "errorhandler(503)" in code]
    app = make_app(PGPOOL_MAXCONN=1, PGPOOL_TIMEOUT=0.2, PGPOOL_RETRY_AFTER=3)
    exec(compile(code, "troubleshooting.rst", "exec"), {"app": app})

    @app.get("/db")
    def db() -> str:
        get_db()
        return "ok"

    held = app.extensions["pgpool"].get_pool(app=app).getconn()
    try:
        response = app.test_client().get("/db")
    finally:
        app.extensions["pgpool"].get_pool(app=app).putconn(held)
    assert response.status_code == 503
    assert response.json == {"error": "busy", "retry_after": 3}
    assert response.headers["Retry-After"] == "3"
