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

from ._errors import PgPoolError

__all__ = ["ERROR_CODE", "MESSAGE", "service_unavailable"]

_log = logging.getLogger("flask_pgpool")

#: The ``error`` of the JSON body: stable, for clients to test.
ERROR_CODE = "database_unavailable"
#: The message shown to clients; the reason (which never names a password) goes to the log only.
MESSAGE = "The database is busy or unreachable. Please try again shortly."
_JSON = "application/json"
_HTML = "text/html"


def service_unavailable(error: PgPoolError, retry_after: int) -> ResponseReturnValue:
    """The error handler for :class:`PgPoolError`: a 503, not a 500 or a hang."""
    _log.warning("flask-pgpool: answering 503: %s", error)
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
