"""flask-pgpool: a dependable PostgreSQL connection pool for Flask, on psycopg2.

Each request that calls :func:`get_db` gets one pooled connection, and the
pool gets it back, rolled back, when the request ends, whatever happened in
the view. A request that finds every connection busy waits its turn up to
``PGPOOL_TIMEOUT`` seconds, then gets a 503::

    from flask import Flask
    from flask_pgpool import PgPool, get_db

    pgpool = PgPool()

    def create_app():
        app = Flask(__name__)
        app.config["PGPOOL_DSN"] = "postgresql://app:secret@localhost:5432/app"
        pgpool.init_app(app)  # checks the config; opens no connection

        @app.get("/notes")
        def notes():
            with get_db().cursor() as cur:
                cur.execute("SELECT id, body FROM notes ORDER BY id")
                return cur.fetchall()

        return app

What it exports:

* :class:`PgPool`, the extension, and :func:`get_db`, the current request's
  connection;
* :class:`ConnectionPool`, the pool engine (a ``ThreadedConnectionPool``
  subclass, usable without Flask), :data:`STATS_KEYS`, the keys of its
  ``get_stats()``, and :data:`PoolEvent`, the events its observers are told of;
* the errors: :class:`PgPoolError` (a 503 in a request) and its subclasses
  :class:`PoolTimeout` (and :class:`DatabaseUnavailable`),
  :class:`TooManyRequests` and :class:`PoolClosed`;
  :class:`ConfigError` and :class:`PgPoolConfigWarning` for the ``PGPOOL_``
  configuration.

The other public modules: ``flask_pgpool.testing``, the pytest plugin (the
``pgpool_dsn``, ``pgpool_database`` and ``pgpool_transaction`` fixtures), and
``flask_pgpool.metrics``, Prometheus metrics (the ``prometheus`` extra). The
command ``flask pgpool-status`` shows the pools and checks the database.
"""

from ._config import ConfigError, PgPoolConfigWarning
from ._errors import DatabaseUnavailable, PgPoolError, PoolClosed, PoolTimeout, TooManyRequests
from ._extension import PgPool, get_db
from ._guard import StaleConnectionError
from ._pool import ConnectionPool
from ._stats import STATS_KEYS, PoolEvent

#: The version of the package; ``setup.cfg`` reads it from here.
__version__ = "0.1.0.dev0"

__all__ = [
    "STATS_KEYS",
    "ConfigError",
    "ConnectionPool",
    "DatabaseUnavailable",
    "PgPool",
    "PgPoolConfigWarning",
    "PgPoolError",
    "PoolClosed",
    "PoolEvent",
    "PoolTimeout",
    "StaleConnectionError",
    "TooManyRequests",
    "__version__",
    "get_db",
]
