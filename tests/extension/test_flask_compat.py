"""Flask's private API is used in one module only, and what it reads there is
what the installed Flask does: these tests fail first when a Flask release
changes one of those internals."""

from __future__ import annotations

import ast
from pathlib import Path

from flask import Blueprint, Flask, Response

import flask_pgpool
from flask_pgpool import _flask_compat as compat

PACKAGE = Path(flask_pgpool.__file__).resolve().parent
PROJECT = PACKAGE.parent
# Names of Flask (and Werkzeug proxy) internals that only _flask_compat may touch.
PRIVATE_ATTRIBUTES = {
    "_cv_app",
    "_cv_request",
    "_cv_tokens",
    "_get_current_object",
    "_find_error_handler",
    "_after_request_functions",
    "error_handler_spec",
    "teardown_appcontext_funcs",
    "teardown_request_funcs",
}


def private_uses(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "flask":
            found += [f"{path.name}:{node.lineno} imports {a.name}" for a in node.names if a.name.startswith("_")]
        elif isinstance(node, ast.Attribute) and node.attr in PRIVATE_ATTRIBUTES:
            found.append(f"{path.name}:{node.lineno} uses .{node.attr}")
    return found


def test_private_flask_api_only_in_the_compat_module() -> None:
    sources = [*PACKAGE.glob("*.py"), *(PROJECT / "benchmarks").rglob("*.py")]
    assert len(sources) > 10
    found = [use for path in sources if path.name != "_flask_compat.py" for use in private_uses(path)]
    assert found == []
    assert private_uses(PACKAGE / "_flask_compat.py")  # the module this test is about


def test_app_context() -> None:
    app = Flask(__name__)
    assert compat.app_context() is None
    assert compat.app_context_or(None) is None
    with app.app_context() as ctx:
        assert compat.app_context() is ctx
        assert compat.app_context_or(None) is ctx


def test_request_context() -> None:
    app = Flask(__name__)
    assert compat.request_context() is None
    assert compat.request_context_or(None) is None
    with app.test_request_context() as request:
        assert compat.request_context() is request
        assert compat.request_context_or(None) is request


def test_after_request_functions_run_after_this_request() -> None:
    app = Flask(__name__)

    def mark(response: Response) -> Response:
        response.headers["X-Hook"] = "ran"
        return response

    @app.route("/")
    def view() -> str:
        compat.after_request_functions(compat.request_context()).append(mark)
        return "ok"

    @app.route("/other")
    def other() -> str:
        return "ok"

    client = app.test_client()
    assert client.get("/").headers.get("X-Hook") == "ran"
    assert "X-Hook" not in client.get("/other").headers  # for that request only


def test_borrowing_request() -> None:
    app = Flask(__name__)
    with app.test_request_context() as owner:
        # A request that pushed its own app context borrows nothing.
        ctx = compat.app_context()
        assert ctx is not None
        assert compat.borrowing_request(ctx) is None
        with app.test_request_context() as inner:
            # One pushed inside it runs in the outer app context.
            assert compat.app_context() is ctx
            assert compat.borrowing_request(ctx) is inner
            assert compat.request_context() is inner
        assert compat.request_context() is owner
    other = Flask("other")
    with app.app_context() as outer, other.test_request_context():
        inner_ctx = compat.app_context()
        assert inner_ctx is not outer
        assert inner_ctx is not None
        assert compat.borrowing_request(inner_ctx) is None


def test_push_marker_tells_pushes_apart() -> None:
    app = Flask(__name__)
    ctx = app.app_context()
    markers = []
    for _ in range(2):
        with ctx:
            markers.append(compat.push_marker(ctx))
            assert compat.push_marker(ctx) is markers[-1]
    assert markers[0] is not markers[1]


def test_enclosing_app_contexts() -> None:
    app = Flask(__name__)
    with app.app_context() as outer, app.app_context() as inner:
        assert list(compat.enclosing_app_contexts(inner)) == [inner, outer]


def test_error_handler_lookup() -> None:
    app = Flask(__name__)
    assert not compat.has_app_error_handler(app, KeyError)
    app.register_error_handler(KeyError, lambda e: ("", 500))
    assert compat.has_app_error_handler(app, KeyError)
    bp = Blueprint("bp", __name__)
    bp.register_error_handler(ValueError, lambda e: ("", 500))
    app.register_blueprint(bp)
    assert not compat.has_app_error_handler(app, ValueError)


def test_teardown_functions_registered_to_run_last() -> None:
    app = Flask(__name__)
    order: list[str] = []
    app.teardown_appcontext(lambda exc: order.append("app, before"))
    app.teardown_request(lambda exc: order.append("request, before"))
    compat.run_last_at_app_teardown(app, lambda exc: order.append("app, last"))
    compat.run_last_at_request_teardown(app, lambda exc: order.append("request, last"))
    app.teardown_appcontext(lambda exc: order.append("app, after"))
    app.teardown_request(lambda exc: order.append("request, after"))
    with app.test_request_context():
        pass
    assert order == [
        "request, after",
        "request, before",
        "request, last",
        "app, after",
        "app, before",
        "app, last",
    ]
