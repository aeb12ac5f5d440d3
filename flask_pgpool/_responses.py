"""The HTTP answers of the extension: a pool that cannot serve answers 503.

JSON for a client that asks for ``application/json``, HTML otherwise, always
with ``Retry-After`` (``PGPOOL_RETRY_AFTER``); the app's own handler for 503
or for the pool's error wins.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import current_app, jsonify, request
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import ServiceUnavailable

from . import _flask_compat as compat
from ._errors import PgPoolError

__all__ = ["ERROR_CODE", "MESSAGE", "pass_on", "service_unavailable"]

_log = logging.getLogger("flask_pgpool")

#: The ``error`` of the JSON body: stable, for clients to test.
ERROR_CODE = "database_unavailable"
#: The message shown to clients; the reason (which never names a password) goes to the log only.
MESSAGE = "The database is busy or unreachable. Please try again shortly."
_JSON = "application/json"
_HTML = "text/html"


def service_unavailable(reason: PgPoolError | str, retry_after: int) -> ResponseReturnValue:
    """A 503 (not a 500 or a hang) for a request the database cannot serve; ``reason`` goes to the log only."""
    _log.warning("flask-pgpool: answering 503: %s", reason)
    unavailable = ServiceUnavailable(description=MESSAGE, retry_after=retry_after or None)
    # The app's (or the blueprint's) 503 handler, if any, shapes the answer;
    # without one, Flask hands the exception back unchanged.
    handled: Any = current_app.handle_http_exception(unavailable)
    if handled is not unavailable:
        return handled  # type: ignore[no-any-return]
    if request.accept_mimetypes.best_match([_HTML, _JSON]) == _JSON:
        response = jsonify(error=ERROR_CODE, message=MESSAGE, retry_after=retry_after or None)
        response.status_code = unavailable.code
    else:
        response = unavailable.get_response()
    if retry_after:
        response.headers["Retry-After"] = str(retry_after)
    response.vary.add("Accept")
    return response


def pass_on(error: Exception, handler: Any) -> ResponseReturnValue:
    """Answer ``error`` the way Flask would without ``handler``, the app's handler that declines it.

    Flask tries blueprint handlers before app handlers, so only the app's
    handlers for the error's other classes are left to try.
    """
    handlers = compat.app_error_handlers(current_app)
    for cls in type(error).__mro__:
        found = handlers.get(cls)
        if found is not None and found is not handler:
            return current_app.ensure_sync(found)(error)  # type: ignore[no-any-return]
    raise error
