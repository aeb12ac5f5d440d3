"""A streamed response holds the request's connection until it is sent, and no
later hook, signal receiver or server can make the pool lose that slot.

A view that returns a generator keeps its connection while the body is sent.
After the view, ``after_request`` hooks may raise or replace the response, a
``request_finished`` receiver may raise, and a server may drop the body without
closing it: in every case the connection goes back to the pool.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask, Response, request, request_finished, stream_with_context
from psycopg2.extensions import connection
from support.http import fetch_value
from support.userconfigs import UserConfig
from werkzeug.test import EnvironBuilder

from flask_pgpool import get_db
from flask_pgpool.testing import rolled_back

pytestmark = pytest.mark.user_configs


@pytest.fixture(autouse=True)
def in_transactions(user_config: UserConfig) -> None:
    if user_config.autocommit:
        pytest.skip("about work a request did not commit: in autocommit every statement commits")


def stats(app: Flask) -> dict[str, int]:
    return app.extensions["pgpool"].get_stats(app=app)  # type: ignore[no-any-return]


def in_use(app: Flask) -> int:
    s = stats(app)
    return s["pool_size"] - s["pool_available"]


def streaming_app(make_app: Callable[..., Flask], table: str, **config: Any) -> Flask:
    """An app whose views stream from a generator that uses the view's connection.

    ``?hook=raise`` / ``?hook=replace`` make an ``after_request`` hook raise or
    replace the response; ``?finished=raise`` makes a ``request_finished``
    receiver raise.
    """
    app = make_app(**{"PGPOOL_MAXCONN": 2, "PGPOOL_TIMEOUT": 1, "PROPAGATE_EXCEPTIONS": False, **config})

    def count(db: connection) -> int:
        with db.cursor() as cur:
            cur.execute(f"SELECT count(*) FROM {table}")
            return int(fetch_value(cur))

    @app.get("/stream")
    def stream() -> Response:
        db = get_db()
        with db.cursor() as cur:
            cur.execute(f"INSERT INTO {table} (note) VALUES ('from the view, not committed')")

        def rows() -> Iterator[str]:
            yield "start\n"
            # The view's connection, with the view's uncommitted work.
            yield f"{count(db)}\n"

        return Response(rows(), mimetype="text/plain")

    @app.get("/stream-with-context")
    def stream_in_context() -> Response:
        with get_db().cursor() as cur:
            cur.execute(f"INSERT INTO {table} (note) VALUES ('from the view, not committed')")

        def rows() -> Iterator[str]:
            yield f"{count(get_db())}\n"

        return Response(stream_with_context(rows()), mimetype="text/plain")

    @app.get("/count")
    def count_view() -> str:
        return str(count(get_db()))

    @app.after_request
    def hook(response: Response) -> Response:
        if request.args.get("hook") == "raise":
            raise RuntimeError("after_request failed")
        if request.args.get("hook") == "replace":
            return Response("replaced", status=202)
        return response

    def finished(sender: Flask, response: Response, **extra: Any) -> None:
        if request.args.get("finished") == "raise":
            raise RuntimeError("request_finished receiver failed")

    request_finished.connect(finished, app)
    app.config["receiver"] = finished  # blinker holds receivers weakly
    return app


@pytest.fixture
def app_of(make_app: Callable[..., Flask], table: str) -> Callable[..., Flask]:
    return lambda **config: streaming_app(make_app, table, **config)


def test_stream_holds_the_connection_and_sees_the_views_work(app_of: Callable[..., Flask]) -> None:
    app = app_of()
    response = app.test_client().get("/stream", buffered=False)
    chunks = iter(response.response)
    assert next(chunks) == b"start\n"
    assert in_use(app) == 1
    assert next(chunks) == b"1\n"
    response.close()
    assert in_use(app) == 0
    # The view's work was not committed: gone once the stream ended.
    assert app.test_client().get("/count").text == "0"


@pytest.mark.parametrize(
    ("query", "status"),
    [("hook=raise", 500), ("hook=replace", 202), ("finished=raise", 500)],
)
def test_a_response_that_will_not_be_sent_gives_the_connection_back(
    app_of: Callable[..., Flask], query: str, status: int
) -> None:
    app = app_of()
    client = app.test_client()
    # More such requests than the pool has connections (maxconn=2).
    for _ in range(3):
        started = time.monotonic()
        assert client.get(f"/stream?{query}").status_code == status
        assert time.monotonic() - started < 5
        assert in_use(app) == 0
    assert client.get("/count").status_code == 200
    assert stats(app)["requests_errors"] == 0


@pytest.mark.parametrize("query", ["hook=raise", "finished=raise"])
def test_a_failing_hook_with_exceptions_propagating(app_of: Callable[..., Flask], query: str) -> None:
    app = app_of(PROPAGATE_EXCEPTIONS=True)
    client = app.test_client()
    for _ in range(3):
        with pytest.raises(RuntimeError, match="failed"):
            client.get(f"/stream?{query}")
        assert in_use(app) == 0
    assert client.get("/count").status_code == 200


def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
    return lambda data: None


@pytest.mark.parametrize("chunks_read", [0, 1])
def test_a_body_dropped_unclosed_gives_the_connection_back(app_of: Callable[..., Flask], chunks_read: int) -> None:
    # A server that drops the body without calling close() (against PEP 3333).
    app = app_of()
    for _ in range(3):
        body = app(EnvironBuilder(path="/stream").get_environ(), start_response)
        for _ in range(chunks_read):
            next(iter(body))
        del body
        gc.collect()
        assert in_use(app) == 0
    assert app.test_client().get("/count").text == "0"


def test_head_request_to_a_streaming_view(app_of: Callable[..., Flask]) -> None:
    app = app_of()
    client = app.test_client()
    for _ in range(3):
        assert client.head("/stream").status_code == 200
        assert in_use(app) == 0


def test_stream_with_context_sees_the_views_work(app_of: Callable[..., Flask]) -> None:
    app = app_of()
    response = app.test_client().get("/stream-with-context")
    assert response.text == "1\n"
    assert in_use(app) == 0
    assert app.test_client().get("/count").text == "0"


# -- the test helpers behave like production ------------------------------------


@pytest.mark.parametrize("path", ["/stream", "/stream-with-context"])
def test_rolled_back_stream_sees_the_views_uncommitted_work(
    app_of: Callable[..., Flask], admin: connection, table: str, path: str
) -> None:
    app = app_of()
    client = app.test_client()
    production = client.get(path).text
    with rolled_back(app):
        assert client.get(path).text == production
        # As in production, the view's uncommitted work ends with the stream.
        assert client.get("/count").text == "0"
    with admin.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {table}")
        assert fetch_value(cur) == 0


@pytest.fixture
def app(make_app: Callable[..., Flask], table: str) -> Flask:
    return streaming_app(make_app, table)


def test_pgpool_transaction_stream_sees_the_views_uncommitted_work(
    app: Flask, client: Any, pgpool_transaction: connection
) -> None:
    assert client.get("/stream").text == "start\n1\n"
    assert client.get("/stream-with-context").text == "1\n"
    assert client.get("/count").text == "0"
    for query in ("hook=raise", "hook=replace", "finished=raise"):
        client.get(f"/stream?{query}")
    assert client.get("/count").text == "0"
