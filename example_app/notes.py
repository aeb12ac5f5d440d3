"""The HTML pages: list, create, edit and delete notes."""

from __future__ import annotations

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from . import models

bp = Blueprint("notes", __name__)


@bp.get("/")
def index() -> ResponseReturnValue:
    return render_template("notes/index.html", notes=models.list_notes())


@bp.route("/new", methods=["GET", "POST"])
def create() -> ResponseReturnValue:
    if request.method == "POST":
        title, body = request.form.get("title", ""), request.form.get("body", "")
        try:
            note = models.create_note(*models.check(title, body))
        except models.Invalid as exc:
            flash(str(exc), "error")
            return render_template("notes/form.html", note=None, title=title, body=body), 400
        flash(f"Created “{note['title']}”.", "success")
        return redirect(url_for("notes.index"))
    return render_template("notes/form.html", note=None, title="", body="")


@bp.route("/<int:note_id>/edit", methods=["GET", "POST"])
def edit(note_id: int) -> ResponseReturnValue:
    note = models.get_note(note_id) or abort(404)
    if request.method == "POST":
        title, body = request.form.get("title", ""), request.form.get("body", "")
        try:
            updated = models.update_note(note_id, *models.check(title, body)) or abort(404)
        except models.Invalid as exc:
            flash(str(exc), "error")
            return render_template("notes/form.html", note=note, title=title, body=body), 400
        flash(f"Saved “{updated['title']}”.", "success")
        return redirect(url_for("notes.index"))
    return render_template("notes/form.html", note=note, title=note["title"], body=note["body"])


@bp.post("/<int:note_id>/delete")
def delete(note_id: int) -> ResponseReturnValue:
    if not models.delete_note(note_id):
        abort(404)
    flash("Note deleted.", "success")
    return redirect(url_for("notes.index"))
