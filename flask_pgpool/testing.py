"""A pytest plugin for testing apps that use flask-pgpool.

Installed with flask-pgpool and loaded by pytest as the ``pgpool`` plugin. It
does nothing until a test asks for one of its fixtures:

``pgpool_dsn`` (session)
    The DSN of a PostgreSQL server for the tests: the ``PGPOOL_TEST_DSN``
    environment variable, else the ``pgpool_test_dsn`` ini option, else a
    throwaway server (the ``embedded`` extra) deleted at the end of the session.

``pgpool_schema`` (session)
    What creates your tables; override it in your ``conftest.py``: SQL text,
    a :class:`~pathlib.Path` of an SQL file, a function that takes a psycopg2
    connection, or a list of these. Default: nothing.

``pgpool_database`` (session)
    The DSN of a new database on that server, made for the test session with
    ``pgpool_schema`` applied once, and dropped at the end of the session.
    Give it to your app as ``PGPOOL_DSN``.

``pgpool_transaction``
    Runs the test inside a transaction that is rolled back afterwards. Uses
    your ``app`` fixture: during the test, every :func:`~flask_pgpool.get_db`
    of that app returns one connection, whose ``commit()`` keeps the work for
    the rest of the test only and whose ``rollback()`` undoes the work since
    the last commit, as usual. Yields that connection.

:func:`rolled_back` is the same, as a context manager, for use outside pytest.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias, cast

import pytest

if TYPE_CHECKING:
    from flask import Flask
    from psycopg2.extensions import connection

    from ._pool import ConnectionPool

__all__ = [
    "RolledBackConnection",
    "Schema",
    "SchemaPart",
    "apply_schema",
    "fresh_database",
    "pgpool_database",
    "pgpool_dsn",
    "pgpool_schema",
    "pgpool_transaction",
    "rolled_back",
]

#: What :func:`apply_schema` accepts: SQL text, an SQL file, a function of a connection, or a list of these.
SchemaPart: TypeAlias = "str | Path | Callable[[connection], object]"
Schema: TypeAlias = "SchemaPart | Sequence[SchemaPart] | None"

DSN_ENV = "PGPOOL_TEST_DSN"
DSN_INI = "pgpool_test_dsn"
_SAVEPOINT = "flask_pgpool_test"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        DSN_INI,
        f"DSN of the PostgreSQL server for the pgpool_dsn fixture ({DSN_ENV} wins; unset: a throwaway embedded server)",
        default="",
    )


@pytest.fixture(scope="session")
def pgpool_dsn(pytestconfig: pytest.Config) -> Iterator[str]:
    """A PostgreSQL server for the test session (see the module's doc)."""
    dsn = os.environ.get(DSN_ENV) or str(pytestconfig.getini(DSN_INI) or "")
    if dsn:
        yield dsn
        return
    from ._embedded import throwaway_server

    with throwaway_server(prefix="pgpool-pytest-") as dsn:
        yield dsn


@pytest.fixture
def pgpool_transaction(app: Flask) -> Iterator[connection]:
    """Every get_db() of ``app`` in this test shares one connection, rolled back at the end."""
    with rolled_back(app) as conn:
        yield conn


class RolledBackConnection:
    """Mixed into the psycopg2 connection that :func:`rolled_back` hands out.

    The test's transaction stays open: ``commit()`` moves a savepoint forward
    instead of committing, ``rollback()`` goes back to it, ``close()`` does
    nothing, and ``with conn:`` does the same as on a plain connection.
    """

    def commit(self) -> None:
        """Keep the work so far for the rest of the test (the test's transaction stays open)."""
        from psycopg2.extensions import TRANSACTION_STATUS_IDLE, TRANSACTION_STATUS_INERROR

        from ._queries import execute

        status = self._conn.info.transaction_status
        if status == TRANSACTION_STATUS_IDLE:
            # A raw COMMIT/ROLLBACK statement ended the test's transaction.
            execute(self._conn, f"SAVEPOINT {_SAVEPOINT}")
            return
        if status == TRANSACTION_STATUS_INERROR:
            # Like COMMIT on a failed transaction: its work is lost, no error.
            execute(self._conn, f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}")
        execute(self._conn, f"RELEASE SAVEPOINT {_SAVEPOINT}; SAVEPOINT {_SAVEPOINT}")

    def rollback(self) -> None:
        """Undo the work since the last :meth:`commit` (or since the test began)."""
        from psycopg2.extensions import TRANSACTION_STATUS_IDLE

        from ._queries import execute

        if self._conn.info.transaction_status == TRANSACTION_STATUS_IDLE:
            execute(self._conn, f"SAVEPOINT {_SAVEPOINT}")
        else:
            execute(self._conn, f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}")

    def close(self) -> None:
        """The connection belongs to the test: closing it in a view does nothing."""

    def __enter__(self) -> Any:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.rollback()

    @property
    def _conn(self) -> connection:
        return cast("connection", self)


class _TestConnections:
    """Lends the test's connections to get_db() in place of the pools.

    When a request (or app context) ends, the extension gives its connections
    back; here that undoes what it did not commit, as the pool would, and
    keeps the connection for the rest of the test.
    """

    def __init__(self, conns: dict[str, connection]) -> None:
        self._conns = conns

    def lend(self, bind: str) -> connection:
        return self._conns[bind]

    def putconn(self, conn: connection) -> None:
        if not conn.closed:
            conn.rollback()


@contextlib.contextmanager
def rolled_back(app: Flask) -> Iterator[connection]:
    """Within the block, ``app``'s get_db() returns connections whose work is rolled back at the end.

    One connection per bind of ``PGPOOL_BINDS``, opened with the pool's
    settings but outside the pool; the default bind's is yielded. Requests
    and app contexts end as in production (streamed responses included);
    only the connection they use is the test's.
    """
    from psycopg2.extensions import connection as plain

    from ._extension import PgPool

    ext = app.extensions.get("pgpool")
    if not isinstance(ext, PgPool):
        raise RuntimeError("rolled_back(app): flask-pgpool is not set up on this app (PgPool(app) or init_app)")
    conns: dict[str, connection] = {}
    try:
        for bind, pool in ext.get_pools(app).items():
            conns[bind] = _open(pool)
        with ext._lending(app, _TestConnections(conns)):
            yield conns["default"]
    finally:
        for conn in conns.values():
            with contextlib.suppress(Exception):
                plain.rollback(conn)
            plain.close(conn)


def _open(pool: ConnectionPool) -> connection:
    """A connection like the pool's, in the test's transaction."""
    import psycopg2
    from psycopg2.extensions import TRANSACTION_STATUS_IDLE
    from psycopg2.extensions import connection as plain

    from ._queries import execute

    dsn, kwargs = pool.connect_params()
    base = kwargs.pop("connection_factory", None) or plain
    factory = type(f"RolledBack[{base.__name__}]", (RolledBackConnection, base), {})
    conn = cast("connection", psycopg2.connect(dsn, connection_factory=factory, **kwargs))
    try:
        if pool.read_only:
            conn.set_session(readonly=True)
        if pool.configure is not None:
            pool.configure(conn)
            if conn.info.transaction_status != TRANSACTION_STATUS_IDLE:
                plain.rollback(conn)
        execute(conn, f"SAVEPOINT {_SAVEPOINT}")
    except BaseException:
        plain.close(conn)
        raise
    return conn


# -- your schema, once per test session -------------------------------------------


@pytest.fixture(scope="session")
def pgpool_schema() -> Schema:
    """What creates your tables in the test database; override it in your ``conftest.py``.

    Return SQL text, a :class:`~pathlib.Path` of an SQL file, a function that
    takes a psycopg2 connection (your ``flask init-db`` code, say), or a list
    of these, applied in order. The default creates nothing.
    """
    return None


@pytest.fixture(scope="session")
def pgpool_database(pgpool_dsn: str, pgpool_schema: Schema) -> Iterator[str]:
    """The DSN of a new database with your schema (``pgpool_schema``), for the whole test session.

    It is created on the ``pgpool_dsn`` server when the first test needs it
    and dropped when the session ends, so every session starts from your
    schema and nothing else.
    """
    with fresh_database(pgpool_dsn, pgpool_schema) as dsn:
        yield dsn


@contextlib.contextmanager
def fresh_database(server_dsn: str, schema: Schema = None, *, prefix: str = "pgpool_test_") -> Iterator[str]:
    """Create a database on the server of ``server_dsn``, apply ``schema`` to it, yield its DSN, drop it.

    The role of ``server_dsn`` needs the ``CREATEDB`` privilege. The database
    is dropped even when sessions are still connected to it.
    """
    import psycopg2
    from psycopg2 import sql
    from psycopg2.extensions import make_dsn

    from ._dsn import mask_dsn

    name = f"{prefix}{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(server_dsn)
    try:
        admin.autocommit = True
        with admin.cursor() as cur:
            try:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            except psycopg2.Error as exc:
                raise RuntimeError(
                    f"cannot create a test database on {mask_dsn(server_dsn)}: {str(exc).strip()}; "
                    f"the role needs the CREATEDB privilege (ALTER ROLE ... CREATEDB), or unset {DSN_ENV} "
                    "to test on a throwaway server"
                ) from None
        try:
            dsn = make_dsn(server_dsn, dbname=name)
            apply_schema(dsn, schema)
            yield dsn
        finally:
            with admin.cursor() as cur:
                # Pools the tests left open would keep the database in use.
                cur.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = %s AND pid <> pg_backend_pid()",
                    (name,),
                )
                cur.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
    finally:
        admin.close()


def apply_schema(dsn: str, schema: Schema) -> None:
    """Run ``schema`` (see :data:`Schema`) on a new connection to ``dsn``, and commit."""
    import psycopg2

    if schema is None:
        return
    parts = list(schema) if isinstance(schema, Sequence) and not isinstance(schema, str) else [schema]
    conn = psycopg2.connect(dsn)
    try:
        for part in parts:
            if isinstance(part, Path):
                with conn.cursor() as cur:
                    cur.execute(part.read_text(encoding="utf-8"))
            elif isinstance(part, str):
                with conn.cursor() as cur:
                    cur.execute(part)
            elif callable(part):
                part(conn)
            else:
                raise TypeError(
                    "pgpool_schema must return SQL text, a pathlib.Path of an SQL file, a function taking a "
                    f"connection, a list of these, or None; got {type(part).__name__}"
                )
            conn.commit()
    finally:
        conn.close()
