"""Every use of Flask's private API, each behind one small function.

Checked on Flask 2.3.0, 3.0.0 and 3.1.3 (``tests/extension/test_flask_compat.py``
tests each function against the installed Flask). When a Flask release moves
one of these internals, only this module changes.
"""

from __future__ import annotations

import contextvars
import functools
import operator
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from flask import Flask
from flask import globals as flask_globals
from flask.ctx import AppContext

__all__ = [
    "after_request_functions",
    "app_context",
    "app_context_or",
    "app_error_handlers",
    "borrowed_by",
    "borrowing_request",
    "enclosing_app_contexts",
    "has_app_error_handler",
    "push_marker",
    "pushed_app_context",
    "request_context",
    "request_context_or",
    "run_last_at_app_teardown",
    "run_last_at_request_teardown",
]

# Flask's context variables. get_db() reads them directly because Flask's
# proxies (has_app_context(), current_app, g) cost more than the pool's own
# checkout on the request path. Flask >= 3.2 merges the request context into
# the app context and may drop _cv_request: then no request borrows a context.
_cv_app: contextvars.ContextVar[AppContext] = flask_globals._cv_app
_cv_request: contextvars.ContextVar[Any] | None = getattr(flask_globals, "_cv_request", None)

TeardownFunction = Callable[[BaseException | None], None]


#: The current app context, or None. A C-level callable: the check of every
#: cursor() of a request's connection calls it (see _guard).
app_context: Callable[[], AppContext | None] = functools.partial(_cv_app.get, None)


#: ``app_context_or(None)``: app_context() without the functools.partial
#: layer, for the paths every request runs (get_db(), the teardown, the
#: checked methods of _guard): the bound ``get`` of Flask's context variable,
#: given its default by the caller. About 200 instructions less per call.
app_context_or: Callable[[None], AppContext | None] = _cv_app.get


def _no_request_context(default: None = None) -> None:
    return None


#: The current request context, or None (also on a Flask without request
#: contexts). C-level where it can be, as app_context: get_db() calls it.
request_context: Callable[[], Any | None] = (
    _no_request_context if _cv_request is None else functools.partial(_cv_request.get, None)
)
#: ``request_context_or(None)``: request_context() for the hot paths, as app_context_or.
request_context_or: Callable[[None], Any | None] = _no_request_context if _cv_request is None else _cv_request.get


def borrowed_by(request: Any, ctx: AppContext) -> bool:
    """Whether ``request`` (the current request context) runs inside ``ctx`` without having pushed it.

    Before Flask 3.2, a request context pushed while an app context of the
    same app is current (pytest-flask's context for the test, or a test's
    ``with app.app_context():`` around the test client) reuses that app
    context: its ``g`` and its teardown belong to the outer context, not to
    the request. ``RequestContext._cv_tokens`` records, for its first push,
    the app context it pushed, or None when it reused one.
    """
    # The app is compared last: in production a request pushes its own context.
    tokens = request._cv_tokens
    return bool(tokens) and tokens[0][1] is None and request.app is ctx.app


def pushed_app_context(request: Any) -> AppContext | None:
    """The app context ``request`` (the current request context) pushed itself, or None if it borrowed one.

    When it is the current app context, the request is a production request
    (it borrows nothing): get_db() decides that with this one call, without
    :func:`borrowed_by`.
    """
    tokens = request._cv_tokens
    return tokens[0][1] if tokens else None


def borrowing_request(ctx: AppContext) -> Any | None:
    """The current request context if it runs inside ``ctx`` without having pushed it (see borrowed_by)."""
    request = request_context()
    if request is not None and borrowed_by(request, ctx):
        return request
    return None


#: ``after_request_functions(request).append(func)`` is ``flask.after_this_request(func)``
#: for ``request``, the current request context: the same list Flask's function
#: appends to, without looking the request context up again (get_db() has it
#: at hand). C-level, as app_context_or: get_db() calls it on every request.
after_request_functions: Callable[[Any], list[Callable[[Any], Any]]] = operator.attrgetter("_after_request_functions")


def push_marker(ctx: Any) -> object | None:
    """An object that stays the same while ``ctx`` stays pushed, and differs once it is pushed again.

    Contexts keep one ContextVar token per push in ``_cv_tokens`` (app
    contexts: tokens; request contexts: (token, app context) pairs).
    """
    tokens = ctx._cv_tokens
    return tokens[-1] if tokens else None


def enclosing_app_contexts(ctx: AppContext) -> Iterator[AppContext]:
    """``ctx``, then the app contexts it was pushed inside, innermost first.

    Each push's token remembers the app context that was current before it.
    A context pushed again while it is current (Flask's test client re-pushes
    the context a request borrowed; ``with ctx, ctx:``) remembers itself:
    such tokens are skipped, and the walk never gives a context twice.
    """
    given: list[AppContext] = []
    seen: AppContext | None = ctx
    while seen is not None and not any(seen is done for done in given):
        yield seen
        given.append(seen)
        current = seen
        previous: Any = next(
            (token.old_value for token in reversed(current._cv_tokens) if token.old_value is not current),
            None,
        )
        seen = None if previous is contextvars.Token.MISSING else previous


def app_error_handlers(app: Flask) -> Mapping[type[BaseException], Callable[..., Any]]:
    """The app's own (not a blueprint's) error handlers for exception classes, by class.

    ``error_handler_spec[blueprint][code]`` holds them; code None is for
    classes rather than HTTP status codes.
    """
    return app.error_handler_spec[None][None]  # type: ignore[return-value]


def has_app_error_handler(app: Flask, exc_class: type[BaseException]) -> bool:
    """Whether the app itself (not a blueprint) registered a handler for exactly ``exc_class``."""
    return exc_class in app_error_handlers(app)


def run_last_at_app_teardown(app: Flask, func: TeardownFunction) -> None:
    """Register ``func`` to run after every teardown_appcontext function, whenever they are registered.

    Flask calls them in reverse order of registration: the first of the list
    runs last.
    """
    app.teardown_appcontext_funcs.insert(0, func)


def run_last_at_request_teardown(app: Flask, func: TeardownFunction) -> None:
    """Register ``func`` to run after the app's other teardown_request functions (see above).

    Also after the app has handled requests, which Flask's decorator refuses:
    the list is replaced, not changed, so that a teardown running meanwhile
    (in this thread or another) goes through the list it started with.
    """
    app.teardown_request_funcs[None] = [func, *app.teardown_request_funcs.get(None, [])]
