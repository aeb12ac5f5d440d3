"""The example app's HTML pages and CLI, each test in a transaction rolled back afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest
from flask import Flask
from flask.testing import FlaskClient
from psycopg2.extensions import connection
from support.http import body, fetch_value

from example_app import create_app, pgpool

pytestmark = pytest.mark.usefixtures("pgpool_transaction")


@pytest.fixture
def app(pgpool_dsn: str) -> Iterator[Flask]:
    app = create_app({"TESTING": True, "PGPOOL_DSN": pgpool_dsn, "PGPOOL_TIMEOUT": 5})
    yield app
    pgpool.close(app)


def table_exists(conn: connection) -> bool:
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('notes') IS NOT NULL")
        return bool(fetch_value(cur))


def add(client: FlaskClient, title: str, body: str = "") -> Any:
    return client.post("/new", data={"title": title, "body": body}, follow_redirects=True)


def test_first_request_creates_the_schema(client: FlaskClient, pgpool_transaction: connection) -> None:
    assert not table_exists(pgpool_transaction)
    response = client.get("/")
    assert response.status_code == 200
    assert "No notes yet" in response.text
    assert table_exists(pgpool_transaction)


def test_create_from_the_form_then_listed(client: FlaskClient) -> None:
    assert client.get("/new").status_code == 200
    response = client.post("/new", data={"title": "Buy milk", "body": "2 litres"})
    assert response.status_code == 302
    page = client.get(response.headers["Location"]).text
    assert "Created “Buy milk”." in page
    assert "Buy milk" in page and "2 litres" in page


def test_create_without_title_is_refused(client: FlaskClient) -> None:
    response = client.post("/new", data={"title": "   ", "body": "lost?"})
    assert response.status_code == 400
    assert "A title is required." in response.text
    # The form keeps what was typed.
    assert "lost?" in response.text
    assert body(client.get("/api/notes")) == []


def test_edit_changes_the_note(client: FlaskClient) -> None:
    note = body(client.post("/api/notes", json={"title": "Draft", "body": "v1"}))
    form = client.get(f"/{note['id']}/edit")
    assert form.status_code == 200
    assert 'value="Draft"' in form.text and "v1" in form.text
    page = client.post(f"/{note['id']}/edit", data={"title": "Final", "body": "v2"}, follow_redirects=True).text
    assert "Saved “Final”." in page
    assert body(client.get(f"/api/notes/{note['id']}"))["body"] == "v2"


def test_edit_refuses_bad_input_and_keeps_the_note(client: FlaskClient) -> None:
    note = body(client.post("/api/notes", json={"title": "Keep me"}))
    response = client.post(f"/{note['id']}/edit", data={"title": "x" * 201})
    assert response.status_code == 400
    assert "at most 200 characters" in response.text
    assert body(client.get(f"/api/notes/{note['id']}"))["title"] == "Keep me"


def test_delete_removes_the_note(client: FlaskClient) -> None:
    note = body(client.post("/api/notes", json={"title": "Short-lived"}))
    page = client.post(f"/{note['id']}/delete", follow_redirects=True).text
    assert "Note deleted." in page
    assert "Short-lived" not in page
    assert client.post(f"/{note['id']}/delete").status_code == 404


def test_missing_note_pages_are_404(client: FlaskClient) -> None:
    assert client.get("/4242/edit").status_code == 404
    assert client.post("/4242/edit", data={"title": "x"}).status_code == 404
    assert client.post("/4242/delete").status_code == 404


def test_titles_are_escaped(client: FlaskClient) -> None:
    add(client, "<script>alert(1)</script>")
    page = client.get("/").text
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


@pytest.mark.parametrize("run", ["first", "second"])
def test_each_test_starts_with_no_notes(client: FlaskClient, pgpool_dsn: str, run: str) -> None:
    # Both runs add the same note: the second sees one note only if the
    # first test's writes were rolled back.
    add(client, "Only one")
    assert [note["title"] for note in body(client.get("/api/notes"))] == ["Only one"]
    # Committed by the views, yet invisible outside the test's transaction:
    # even the table, created by the first request, is not there.
    outside = psycopg2.connect(pgpool_dsn)
    try:
        with outside.cursor() as cur:
            cur.execute("SELECT to_regclass('notes')")
            assert fetch_value(cur) is None
    finally:
        outside.close()


def test_pool_page_shows_live_stats(client: FlaskClient) -> None:
    page = client.get("/pool").text
    assert "Connection pool" in page
    for key in ("pool_size", "requests_waiting", "connections_lost"):
        assert key in page
    assert client.get("/static/style.css").status_code == 200


def test_init_db_creates_the_schema(app: Flask, pgpool_transaction: connection) -> None:
    runner = app.test_cli_runner()
    result = runner.invoke(args=["init-db"])
    assert result.exit_code == 0, result.output
    assert "Initialized the database" in result.output
    assert table_exists(pgpool_transaction)
    # Again: idempotent, and keeps the notes.
    with pgpool_transaction.cursor() as cur:
        cur.execute("INSERT INTO notes (title) VALUES ('kept')")
    assert runner.invoke(args=["init-db"]).exit_code == 0
    with pgpool_transaction.cursor() as cur:
        cur.execute("SELECT count(*) FROM notes")
        assert fetch_value(cur) == 1
    result = runner.invoke(args=["init-db", "--reset"], input="y\n")
    assert result.exit_code == 0, result.output
    with pgpool_transaction.cursor() as cur:
        cur.execute("SELECT count(*) FROM notes")
        assert fetch_value(cur) == 0
