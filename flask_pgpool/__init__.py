"""flask-pgpool: a dependable PostgreSQL connection pool for Flask, on psycopg2."""

from ._config import ConfigError, PgPoolConfigWarning
from ._errors import PgPoolError, PoolClosed, PoolTimeout, TooManyRequests
from ._extension import PgPool, get_db
from ._guard import StaleConnectionError
from ._pool import STATS_KEYS, ConnectionPool

__all__ = [
    "STATS_KEYS",
    "ConfigError",
    "ConnectionPool",
    "PgPool",
    "PgPoolConfigWarning",
    "PgPoolError",
    "PoolClosed",
    "PoolTimeout",
    "StaleConnectionError",
    "TooManyRequests",
    "get_db",
]
