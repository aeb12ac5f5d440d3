"""The Flask app that the deploy tests serve with real WSGI servers.

Configured from the environment, so that every server loads it the same way
(``served_app:app``): ``SERVED_DSN``, ``SERVED_APP_NAME`` (the sessions'
application_name), ``SERVED_MAXCONN``, and ``SERVED_MASTER_BACKEND_FILE`` for
an app that queries at import time, as some do: a server that loads the app
before forking (gunicorn --preload, uWSGI without lazy-apps) then holds a
connection in its master process, and writes its backend pid to that file.
"""

from __future__ import annotations

import os
import time

from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue

from flask_pgpool import PgPool, get_db

__all__ = ["app"]

app = Flask(__name__)
app.config.update(
    PGPOOL_DSN=os.environ["SERVED_DSN"],
    PGPOOL_MAXCONN=int(os.environ.get("SERVED_MAXCONN", "2")),
    PGPOOL_MINCONN=int(os.environ.get("SERVED_MINCONN", "1")),
    PGPOOL_TIMEOUT=float(os.environ.get("SERVED_TIMEOUT", "30")),
    PGPOOL_CONNECT_ARGS={"application_name": os.environ["SERVED_APP_NAME"]},
)
pgpool = PgPool(app)

_master_file = os.environ.get("SERVED_MASTER_BACKEND_FILE")
if _master_file:
    with app.app_context(), get_db().cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        row = cur.fetchone()
        assert row is not None
        with open(_master_file, "w") as f:
            f.write(str(row[0]))


@app.get("/work")
def work() -> ResponseReturnValue:
    """One query that waits ``?sleep=`` seconds on the server; says who served it and when.

    ``started`` and ``ended`` (the machine's monotonic clock) bracket the
    query only, not the wait for a connection.
    """
    seconds = float(request.args.get("sleep", "0"))
    conn = get_db()
    started = time.monotonic()
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid(), pg_sleep(%s)", (seconds,))
        row = cur.fetchone()
    ended = time.monotonic()
    assert row is not None
    return jsonify(worker=os.getpid(), backend=row[0], started=started, ended=ended)
