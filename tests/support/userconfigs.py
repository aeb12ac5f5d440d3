"""The ways users configure their connections, for suites to run under each of them.

Users pick the rows their cursors return (``DictCursor``, ``RealDictCursor``,
``NamedTupleCursor``), a connection class (``LoggingConnection``, set up in
``PGPOOL_CONFIGURE``), autocommit sessions, binds that log in as another role
with a password, or psycopg2's keyed checkouts. Whatever flask-pgpool does on
its own (pings, health checks, rollbacks, the CLI) must work under each.

A test module opts in with ``pytestmark = pytest.mark.user_configs``; its
tests that build apps or pools (``make_app``, ``make_pool``) then run once per
user configuration selected by the ``PGPOOL_TEST_MATRIX`` environment
variable: unset, only the default (the everyday fast run); ``all``, every one;
or a comma-separated list of names (``dict_cursor,keyed``).

Registered through ``pytest_plugins`` in tests/conftest.py.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import uuid
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg2
import psycopg2.extras
import pytest
from psycopg2.extensions import connection, make_dsn

from flask_pgpool import ConnectionPool

__all__ = [
    "DEFAULT",
    "USER_CONFIGS",
    "KeyedPool",
    "SecondRole",
    "UserConfig",
    "as_role",
    "first_value",
    "matrix_role",
    "selected",
    "user_config",
]

MATRIX_ENV = "PGPOOL_TEST_MATRIX"
MARKER = "user_configs"
_SQL_LOG = logging.getLogger("tests.sql")


@dataclass(frozen=True)
class SecondRole:
    """A login role with a password on the test server, for binds that connect as themselves."""

    name: str
    password: str
    main_user: str  # the role the test server's DSN logs in as


@dataclass(frozen=True)
class UserConfig:
    """One way of configuring connections, as an app would."""

    name: str
    connect_args: Mapping[str, Any] = field(default_factory=dict)
    autocommit: bool = False
    logging_connection: bool = False
    # Apps: the main pool names its user and password in PGPOOL_CONNECT_ARGS and a
    # bind logs in as a second role; pools: they log in as the second role.
    own_role: bool = False
    keyed: bool = False  # pools: every checkout under a key (make_app's pools take no keys)
    for_apps: bool = True
    for_pools: bool = True

    def configure(self, conn: connection) -> None:
        """What the app's PGPOOL_CONFIGURE does with each new connection."""
        if self.logging_connection and isinstance(conn, psycopg2.extras.LoggingConnection):
            conn.initialize(_SQL_LOG)
        if self.autocommit:
            conn.autocommit = True

    def then(self, own: Callable[[connection], None] | None) -> Callable[[connection], None]:
        """This configuration's setup, then the test's own ``configure``."""

        def configure(conn: connection) -> None:
            self.configure(conn)
            if own is not None:
                own(conn)

        return configure


USER_CONFIGS = (
    UserConfig("default"),
    UserConfig("dict_cursor", connect_args={"cursor_factory": psycopg2.extras.DictCursor}),
    UserConfig("real_dict_cursor", connect_args={"cursor_factory": psycopg2.extras.RealDictCursor}),
    UserConfig("namedtuple_cursor", connect_args={"cursor_factory": psycopg2.extras.NamedTupleCursor}),
    UserConfig(
        "logging_connection",
        connect_args={"connection_factory": psycopg2.extras.LoggingConnection},
        logging_connection=True,
    ),
    UserConfig("autocommit", autocommit=True),
    UserConfig("own_role", own_role=True),
    UserConfig("keyed", keyed=True, for_apps=False),
)
DEFAULT = USER_CONFIGS[0]


def selected() -> list[UserConfig]:
    """The configurations ``PGPOOL_TEST_MATRIX`` asks for ([] when unset)."""
    wanted = os.environ.get(MATRIX_ENV, "").strip()
    if not wanted:
        return []
    if wanted.lower() in ("1", "all", "yes", "true", "on"):
        return list(USER_CONFIGS)
    by_name = {c.name: c for c in USER_CONFIGS}
    names = [name.strip() for name in wanted.split(",") if name.strip()]
    unknown = [name for name in names if name not in by_name]
    if unknown:
        raise pytest.UsageError(f"{MATRIX_ENV}: unknown configuration(s) {unknown}; known: {sorted(by_name)}")
    return [by_name[name] for name in names]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{MARKER}: run the module's app and pool tests under each user configuration of {MATRIX_ENV}"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "user_config" not in metafunc.fixturenames or metafunc.definition.get_closest_marker(MARKER) is None:
        return
    apps, pools = "make_app" in metafunc.fixturenames, "make_pool" in metafunc.fixturenames
    configs = [c for c in selected() if (apps and c.for_apps) or (pools and c.for_pools)]
    if configs:
        metafunc.parametrize("user_config", configs, indirect=True, ids=[c.name for c in configs])


@pytest.fixture
def user_config(request: pytest.FixtureRequest) -> UserConfig:
    """The user configuration the test's apps and pools are built with (see the module's doc)."""
    config: UserConfig = getattr(request, "param", DEFAULT)
    if config.own_role and os.environ.get("PGPOOL_TEST_PGBOUNCER"):
        pytest.skip("own_role: PgBouncer's test setup logs every client in as one user")
    return config


@pytest.fixture(scope="session")
def matrix_role(pg_server_dsn: str) -> Iterator[SecondRole]:
    """A second login role with a password (quotes, spaces, @ and / in it), dropped at the end."""
    role = SecondRole(f"pgpool_matrix_{uuid.uuid4().hex[:8]}", "m@trix p/w'\\x", "")
    admin = psycopg2.connect(pg_server_dsn)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute("SELECT current_user")
            main_user = first_value(cur.fetchone())
            cur.execute(f"CREATE ROLE {role.name} LOGIN PASSWORD %s", (role.password,))
        yield SecondRole(role.name, role.password, main_user)
    finally:
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role.name,))
            cur.execute(f"DROP ROLE IF EXISTS {role.name}")
        admin.close()


def as_role(dsn: str, role: SecondRole) -> str:
    """``dsn`` logging in as ``role``, with its password."""
    return str(make_dsn(dsn, user=role.name, password=role.password))


def first_value(row: Any) -> Any:
    """The first column of a row, whatever the cursor factory made of it."""
    assert row is not None, "the query returned no row"
    if isinstance(row, Mapping):
        return next(iter(row.values()))
    return row[0]


class KeyedPool(ConnectionPool):
    """Checks every connection out under a key of its own, as code using psycopg2's keyed API does."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._test_keys: dict[int, Hashable] = {}
        self._key_numbers = itertools.count()
        self._keying = threading.local()

    def getconn(self, key: Hashable | None = None, timeout: float | None = None) -> connection:
        # The pool's keyed checkout may call getconn() itself, without a key: pass that through.
        if key is not None or getattr(self._keying, "active", False):
            return super().getconn(key, timeout)
        key = ("test-key", next(self._key_numbers))
        self._keying.active = True
        try:
            conn = super().getconn(key, timeout)
        finally:
            self._keying.active = False
        self._test_keys[id(conn)] = key
        return conn

    def putconn(self, conn: connection | None = None, key: Hashable | None = None, close: bool = False) -> None:
        if key is None and conn is not None:
            key = self._test_keys.pop(id(conn), None)
        super().putconn(conn, key, close)
