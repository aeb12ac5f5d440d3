"""The 503 a pool that cannot serve answers: JSON for clients that ask for it,
HTML otherwise, always with Retry-After, and the app's own handler first."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask

from flask_pgpool import PgPoolError, get_db

JSON = "application/json"
BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"


@pytest.fixture
def busy_app(make_app: Callable[..., Flask]) -> Iterator[Callable[..., Flask]]:
    """An app whose only connection is held by the test: a request's checkout times out."""
    held: list[Any] = []

    def make(**config: Any) -> Flask:
        app = make_app(**{"PGPOOL_MAXCONN": 1, "PGPOOL_TIMEOUT": 0.2, "PGPOOL_RETRY_AFTER": 7, **config})

        @app.get("/db")
        def db() -> str:
            get_db()
            return "got one"

        pool = app.extensions["pgpool"].get_pool(app=app)
        held.append((pool, pool.getconn()))
        return app

    yield make
    for pool, conn in held:
        pool.putconn(conn)


@pytest.mark.parametrize("accept", [JSON, "application/json, text/plain;q=0.5", "application/*"])
def test_json_when_the_client_asks_for_it(busy_app: Callable[..., Flask], accept: str) -> None:
    response = busy_app().test_client().get("/db", headers={"Accept": accept})
    assert response.status_code == 503
    assert response.mimetype == JSON
    assert response.json == {
        "error": "database_unavailable",
        "message": "The database is busy or unreachable. Please try again shortly.",
        "retry_after": 7,
    }
    assert response.headers["Retry-After"] == "7"
    assert "Accept" in response.headers.get("Vary", "")


@pytest.mark.parametrize("accept", [None, "*/*", "text/html", BROWSER, "text/plain"])
def test_html_otherwise(busy_app: Callable[..., Flask], accept: str | None) -> None:
    headers = {"Accept": accept} if accept else {}
    response = busy_app().test_client().get("/db", headers=headers)
    assert response.status_code == 503
    assert response.mimetype == "text/html"
    assert "database is busy or unreachable" in response.text
    assert response.headers["Retry-After"] == "7"


def test_json_without_retry_after(busy_app: Callable[..., Flask]) -> None:
    response = busy_app(PGPOOL_RETRY_AFTER=0).test_client().get("/db", headers={"Accept": JSON})
    assert response.status_code == 503
    assert "Retry-After" not in response.headers
    assert response.json is not None
    assert response.json["retry_after"] is None


def test_the_apps_503_handler_wins_over_json(busy_app: Callable[..., Flask]) -> None:
    app = busy_app()

    @app.errorhandler(503)
    def unavailable(error: Exception) -> tuple[str, int]:
        return "ours", 503

    response = app.test_client().get("/db", headers={"Accept": JSON})
    assert (response.status_code, response.text) == (503, "ours")


def test_the_apps_http_exception_handler_wins_over_json(busy_app: Callable[..., Flask]) -> None:
    from werkzeug.exceptions import HTTPException

    app = busy_app()

    @app.errorhandler(HTTPException)
    def any_http_error(error: HTTPException) -> tuple[dict[str, Any], int]:
        return {"status": error.code}, error.code or 500

    response = app.test_client().get("/db", headers={"Accept": JSON})
    assert (response.status_code, response.json) == (503, {"status": 503})


def test_the_apps_pgpoolerror_handler_wins_over_json(busy_app: Callable[..., Flask]) -> None:
    app = busy_app()

    @app.errorhandler(PgPoolError)
    def busy(error: PgPoolError) -> tuple[dict[str, str], int]:
        return {"mine": "yes"}, 429

    response = app.test_client().get("/db", headers={"Accept": JSON})
    assert (response.status_code, response.json) == (429, {"mine": "yes"})


def test_a_blueprints_503_handler_wins_for_its_views(busy_app: Callable[..., Flask]) -> None:
    from flask import Blueprint

    app = busy_app()
    bp = Blueprint("api", __name__, url_prefix="/api")

    @bp.get("/db")
    def db() -> str:
        get_db()
        return "got one"

    @bp.errorhandler(503)
    def unavailable(error: Exception) -> tuple[dict[str, str], int]:
        return {"api": "busy"}, 503

    app.register_blueprint(bp)
    response = app.test_client().get("/api/db")
    assert (response.status_code, response.json) == (503, {"api": "busy"})
