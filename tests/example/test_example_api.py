"""The example app's JSON API, each test in a transaction rolled back afterwards."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient
from support.http import body

from example_app import create_app, pgpool
from flask_pgpool import STATS_KEYS


@pytest.fixture
def app(pgpool_dsn: str) -> Iterator[Flask]:
    app = create_app({"TESTING": True, "PGPOOL_DSN": pgpool_dsn, "PGPOOL_TIMEOUT": 5})
    yield app
    pgpool.close(app)


pytestmark = pytest.mark.usefixtures("pgpool_transaction")


def test_create_get_and_list(client: FlaskClient) -> None:
    assert body(client.get("/api/notes")) == []
    created = client.post("/api/notes", json={"title": " Groceries ", "body": "eggs"})
    assert created.status_code == 201
    note = body(created)
    assert note["title"] == "Groceries" and note["body"] == "eggs"
    assert created.headers["Location"] == f"/api/notes/{note['id']}"
    assert body(client.get(created.headers["Location"])) == note
    assert body(client.get("/api/notes")) == [note]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({}, "A title is required."),
        ({"title": ""}, "A title is required."),
        ({"title": 42}, "A title is required."),
        ({"title": "ok", "body": ["not", "text"]}, "The body must be text."),
        ({"title": "x" * 201}, "at most 200 characters"),
        (["a", "list"], "must be a JSON object"),
    ],
)
def test_create_refuses_bad_input(client: FlaskClient, payload: object, message: str) -> None:
    response = client.post("/api/notes", json=payload)
    assert response.status_code == 400
    assert body(response)["error"] == "Bad Request"
    assert message in body(response)["message"]
    assert body(client.get("/api/notes")) == []


def test_create_refuses_a_body_that_is_not_json(client: FlaskClient) -> None:
    response = client.post("/api/notes", data="title=x", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 400
    assert response.is_json


def test_put_replaces_and_patch_changes_given_fields(client: FlaskClient) -> None:
    note = body(client.post("/api/notes", json={"title": "a", "body": "b"}))
    url = f"/api/notes/{note['id']}"
    patched = client.patch(url, json={"body": "new body"})
    assert patched.status_code == 200
    assert (body(patched)["title"], body(patched)["body"]) == ("a", "new body")
    put = client.put(url, json={"title": "replaced"})
    assert put.status_code == 200
    assert (body(put)["title"], body(put)["body"]) == ("replaced", "")
    assert body(put)["updated_at"] >= note["updated_at"]
    assert client.put(url, json={"body": "no title"}).status_code == 400
    assert body(client.get(url))["title"] == "replaced"


def test_delete(client: FlaskClient) -> None:
    note = body(client.post("/api/notes", json={"title": "bye"}))
    url = f"/api/notes/{note['id']}"
    response = client.delete(url)
    assert response.status_code == 204
    assert response.data == b""
    assert client.get(url).status_code == 404


@pytest.mark.parametrize("method", ["get", "put", "patch", "delete"])
def test_missing_note_is_a_json_404(client: FlaskClient, method: str) -> None:
    response = getattr(client, method)("/api/notes/4242", json={"title": "x"})
    assert response.status_code == 404
    assert response.json == {"error": "Not Found", "message": "There is no note 4242."}


def test_pool_stats(client: FlaskClient) -> None:
    client.get("/api/notes")
    stats = body(client.get("/api/pool"))
    assert set(stats) == {"default"}
    assert set(stats["default"]) == {*STATS_KEYS, "dsn"}
    assert stats["default"]["pool_max"] == 10
