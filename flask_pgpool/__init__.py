"""flask-pgpool: a dependable PostgreSQL connection pool for Flask, on psycopg2."""

from .config import ConfigError, PgPoolConfigWarning
from .errors import PgPoolError, PoolClosed, PoolTimeout, TooManyRequests
from .extension import PgPool, get_db
from .pool import STATS_KEYS, ConnectionPool

__all__ = [
    "STATS_KEYS",
    "ConfigError",
    "ConnectionPool",
    "PgPool",
    "PgPoolConfigWarning",
    "PgPoolError",
    "PoolClosed",
    "PoolTimeout",
    "TooManyRequests",
    "get_db",
]
