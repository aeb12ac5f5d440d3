"""The benchmarked Flask apps: one module per way of getting a connection.

Every module has ``create_app(dsn=None, maxconn=None)``; gunicorn calls it with
no arguments and it reads ``BENCH_DSN`` and ``BENCH_MAXCONN`` from the
environment. All apps serve the same two views (see :mod:`.common`).
"""

#: Variant key -> (module, label). The order is the order of every table.
VARIANTS: dict[str, tuple[str, str]] = {
    "pgpool": ("benchmarks.apps.pgpool_app", "flask-pgpool (defaults)"),
    "recipe": ("benchmarks.apps.recipe_app", "ThreadedConnectionPool recipe"),
    "sqlalchemy": ("benchmarks.apps.sqlalchemy_app", "SQLAlchemy QueuePool pre_ping"),
    "psycopg_pool": ("benchmarks.apps.psycopg_pool_app", "psycopg_pool (psycopg 3)"),
    "per_request": ("benchmarks.apps.per_request_app", "new connection per request"),
    "dedicated": ("benchmarks.apps.dedicated_app", "dedicated connection per thread (limit)"),
}

#: The reference every ratio is taken against: no pool at all.
LIMIT = "dedicated"
