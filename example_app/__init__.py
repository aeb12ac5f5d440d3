"""A small notes app on flask-pgpool: HTML pages, a JSON API, and the pool's live stats.

Run it with ``flask --app example_app run``. With neither ``PGPOOL_DSN`` nor
``DATABASE_URL`` set, it runs its own PostgreSQL server, whose data is kept in
the instance folder.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from flask import Flask

from flask_pgpool import PgPool

from . import api, db, notes, pool_status

__all__ = ["create_app", "pgpool"]

pgpool = PgPool()

# Settings that may also come from the environment, e.g. PGPOOL_DSN=postgresql://...
_FROM_ENVIRONMENT = ("PGPOOL_DSN", "PGPOOL_MINCONN", "PGPOOL_MAXCONN", "PGPOOL_TIMEOUT")


def create_app(test_config: Mapping[str, Any] | None = None, *, instance_path: str | None = None) -> Flask:
    """The application factory; ``test_config`` replaces the instance's config.py."""
    app = Flask(__name__, instance_relative_config=True, instance_path=instance_path)
    app.config.from_mapping(
        SECRET_KEY="dev",
        PGPOOL_MAXCONN=10,
        PGPOOL_TIMEOUT=5,
    )
    app.config.update({key: os.environ[key] for key in _FROM_ENVIRONMENT if os.environ.get(key)})
    if test_config is None:
        app.config.from_pyfile("config.py", silent=True)
    else:
        app.config.update(test_config)
    if not app.config.get("PGPOOL_DSN") and not os.environ.get("DATABASE_URL"):
        # No database given: run one in the instance folder (the 'embedded' extra).
        app.config.setdefault("PGPOOL_EMBEDDED", True)

    pgpool.init_app(app)
    db.init_app(app)
    app.register_blueprint(notes.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(pool_status.bp)
    return app
