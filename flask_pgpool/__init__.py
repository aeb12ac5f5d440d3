"""flask-pgpool: a dependable PostgreSQL connection pool for Flask, on psycopg2."""

from ._config import ConfigError, PgPoolConfigWarning
from ._errors import DatabaseUnavailable, PgPoolError, PoolClosed, PoolTimeout, TooManyRequests
from ._extension import PgPool, get_db
from ._pool import ConnectionPool
from ._stats import STATS_KEYS, PoolEvent

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
    "TooManyRequests",
    "get_db",
]
