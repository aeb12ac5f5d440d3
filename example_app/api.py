"""The JSON API under /api: notes (list, get, create, update, delete) and the pool's stats."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, current_app, jsonify, request, url_for
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException

from . import models

bp = Blueprint("api", __name__, url_prefix="/api")


@bp.errorhandler(HTTPException)
def json_error(error: HTTPException) -> ResponseReturnValue:
    """Errors of the API (400, 404, 503 from the pool...) are JSON too."""
    response = error.get_response()
    response.data = current_app.json.dumps({"error": error.name, "message": error.description})
    response.content_type = "application/json"
    return response


def _note_json(note: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": note["id"],
        "title": note["title"],
        "body": note["body"],
        "created_at": note["created_at"].isoformat(),
        "updated_at": note["updated_at"].isoformat(),
    }


def _payload() -> dict[str, Any]:
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        abort(400, description="The request body must be a JSON object.")
    return data


def _checked(title: Any, body: Any) -> tuple[str, str]:
    try:
        return models.check(title, body)
    except models.Invalid as exc:
        abort(400, description=str(exc))


@bp.get("/notes")
def list_notes() -> ResponseReturnValue:
    return jsonify([_note_json(note) for note in models.list_notes()])


@bp.get("/notes/<int:note_id>")
def get_note(note_id: int) -> ResponseReturnValue:
    note = models.get_note(note_id) or abort(404, description=f"There is no note {note_id}.")
    return jsonify(_note_json(note))


@bp.post("/notes")
def create_note() -> ResponseReturnValue:
    data = _payload()
    note = models.create_note(*_checked(data.get("title"), data.get("body")))
    return jsonify(_note_json(note)), 201, {"Location": url_for("api.get_note", note_id=note["id"])}


@bp.route("/notes/<int:note_id>", methods=["PUT", "PATCH"])
def update_note(note_id: int) -> ResponseReturnValue:
    """PUT replaces the note (title required); PATCH changes the fields given."""
    data = _payload()
    if request.method == "PATCH":
        current = models.get_note(note_id) or abort(404, description=f"There is no note {note_id}.")
        data = {"title": current["title"], "body": current["body"], **data}
    title, body = _checked(data.get("title"), data.get("body"))
    note = models.update_note(note_id, title, body) or abort(404, description=f"There is no note {note_id}.")
    return jsonify(_note_json(note))


@bp.delete("/notes/<int:note_id>")
def delete_note(note_id: int) -> ResponseReturnValue:
    if not models.delete_note(note_id):
        abort(404, description=f"There is no note {note_id}.")
    return "", 204


@bp.get("/pool")
def pool_stats() -> ResponseReturnValue:
    """The live stats of each pool of this process."""
    pools = current_app.extensions["pgpool"].get_pools()
    return jsonify({name: {"dsn": pool.dsn, **pool.get_stats()} for name, pool in pools.items()})
