"""The pool engine alone: checkout + return pairs per second, hand-over waits, order, and a profile.

``python -m benchmarks.engine`` measures flask-pgpool's ``ConnectionPool``
against psycopg_pool, SQLAlchemy's QueuePool and psycopg2's
ThreadedConnectionPool, with no query and no Flask: what the pool itself
costs. ``--quick`` checks the harness in under a minute; ``--profile`` writes
where flask-pgpool's time goes (``benchmarks/results/engine-profile.md``).
"""

__all__: list[str] = []
