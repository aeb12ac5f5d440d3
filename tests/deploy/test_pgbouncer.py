"""flask-pgpool behind a real PgBouncer in transaction pooling mode.

Each test starts its own pgbouncer (tests/support/pgbouncer.py) in front of the
test server, with a small server pool so that which server connection a client
gets is predictable: PgBouncer reuses the most recently released one first.
The "breaks" tests document what a session feature does in transaction mode;
the "safe" tests prove the alternative the README recommends.
"""

from __future__ import annotations

import select
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.errors
import pytest
from flask import Flask, jsonify
from psycopg2.extensions import connection
from support.http import fetch_value
from support.pgbouncer import PgBouncer, pgbouncer_binary

from flask_pgpool import get_db

pytestmark = pytest.mark.skipif(
    pgbouncer_binary() is None,
    reason="pgbouncer is not installed (Debian: apt-get install -y pgbouncer)",
)


@pytest.fixture
def bouncer(pg_server_dsn: str, tmp_path: Path) -> Iterator[PgBouncer]:
    """A pgbouncer (transaction mode, 2 server connections) in front of the test server."""
    with PgBouncer.start(pg_server_dsn, tmp_path, default_pool_size=2) as b:
        yield b


@pytest.fixture
def client_conn(bouncer: PgBouncer, app_name: str) -> Iterator[Callable[..., connection]]:
    """Open plain psycopg2 connections through the bouncer; closed after the test."""
    opened: list[connection] = []

    def connect(**params: Any) -> connection:
        conn = psycopg2.connect(bouncer.dsn(application_name=app_name, **params))
        opened.append(conn)
        return conn

    yield connect
    for conn in opened:
        conn.close()


def one(conn: connection, sql: str, params: Any = None) -> Any:
    with conn.cursor() as cur:
        cur.execute(sql, params)
        if cur.description is None:  # SET, PREPARE, LISTEN...: no rows
            return None
        row = cur.fetchone()
        return row[0] if row else None


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def bouncer_app(make_app: Callable[..., Flask], bouncer: PgBouncer, **config: Any) -> Flask:
    config.setdefault("PGPOOL_MAXCONN", 3)
    config.setdefault("PGPOOL_TIMEOUT", 5)
    config.setdefault("PROPAGATE_EXCEPTIONS", False)  # a crashing view answers 500
    return make_app(PGPOOL_DSN=bouncer.dsn(), **config)


# -- requests ----------------------------------------------------------------


def test_requests_work_in_transaction_mode(make_app: Callable[..., Flask], bouncer: PgBouncer, table: str) -> None:
    app = bouncer_app(make_app, bouncer)

    @app.post("/notes/<note>")
    def add(note: str) -> Any:
        db = get_db()
        with db, db.cursor() as cur:  # commits
            cur.execute(f"INSERT INTO {table} (note) VALUES (%s)", (note,))
        return "", 201

    @app.post("/forgotten/<note>")
    def forgotten(note: str) -> Any:
        with get_db().cursor() as cur:  # never committed
            cur.execute(f"INSERT INTO {table} (note) VALUES (%s)", (note,))
        return "", 201

    @app.get("/notes")
    def notes() -> Any:
        with get_db().cursor() as cur:
            cur.execute(f"SELECT note FROM {table} ORDER BY id")
            return jsonify([r[0] for r in cur.fetchall()])

    client = app.test_client()
    for i in range(10):
        assert client.post(f"/notes/n{i}").status_code == 201
        assert client.post(f"/forgotten/x{i}").status_code == 201
    assert client.get("/notes").get_json() == [f"n{i}" for i in range(10)]
    stats = app.extensions["pgpool"].get_stats(app=app)
    assert stats["pool_size"] == stats["pool_available"] >= 1  # every connection came back
    assert stats["returns_bad"] == 0 and stats["requests_errors"] == 0


def test_rollback_at_return_leaves_no_server_in_a_transaction(
    make_app: Callable[..., Flask],
    bouncer: PgBouncer,
    table: str,
    client_conn: Callable[..., connection],
    server_sessions: Callable[..., list[Any]],
) -> None:
    # First show that the admin console sees a server pinned by an open transaction.
    holder = client_conn()
    one(holder, "SELECT 1")  # psycopg2 opened a transaction: the server is linked to us
    assert bouncer.pool_row()["sv_active"] == 1
    holder.rollback()
    assert bouncer.pool_row()["sv_active"] == 0

    app = bouncer_app(make_app, bouncer)

    @app.post("/work")
    def work() -> Any:
        with get_db().cursor() as cur:  # a view that forgets to commit, or fails midway
            cur.execute(f"INSERT INTO {table} (note) VALUES ('uncommitted')")
        return "", 204

    @app.post("/fail")
    def fail() -> Any:
        with get_db().cursor() as cur:
            cur.execute(f"INSERT INTO {table} (note) VALUES ('failed')")
        raise RuntimeError("view crashed mid-transaction")

    client = app.test_client()
    assert client.post("/work").status_code == 204
    assert client.post("/fail").status_code == 500
    # The pool's client connection stays open and idle, but no server is held.
    pool = bouncer.pool_row()
    assert pool["sv_active"] == 0, pool
    assert pool["cl_waiting"] == 0
    assert all(s["state"] != "active" for s in bouncer.servers())
    assert server_sessions("idle in transaction") == []
    assert server_sessions("idle in transaction (aborted)") == []
    assert one(holder, f"SELECT count(*) FROM {table}") == 0


def test_closing_mid_transaction_rolls_back_first_so_pgbouncer_keeps_the_server(
    make_app: Callable[..., Flask], bouncer: PgBouncer, admin: connection, client_conn: Callable[..., connection]
) -> None:
    def alive(pid: int) -> bool:
        return bool(one(admin, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)))

    # A client closing its socket mid-transaction costs PgBouncer its server connection...
    raw = client_conn()
    raw_pid = one(raw, "SELECT pg_backend_pid()")
    raw.close()
    assert wait_until(lambda: not alive(raw_pid)), "pgbouncer kept a server closed mid-transaction"

    # ...the pool rolls back before it closes, so the server connection is reused.
    app = bouncer_app(make_app, bouncer)
    pool = app.extensions["pgpool"].get_pool(app=app)
    conn = pool.getconn()
    pid = one(conn, "SELECT pg_backend_pid()")
    pool.putconn(conn, close=True)
    assert conn.closed
    time.sleep(0.3)  # would be plenty for pgbouncer to drop it (see above)
    assert alive(pid)
    assert any(s["remote_pid"] == pid for s in bouncer.servers())


def test_session_pool_mode_also_works(make_app: Callable[..., Flask], pg_server_dsn: str, tmp_path: Path) -> None:
    with PgBouncer.start(pg_server_dsn, tmp_path, pool_mode="session", default_pool_size=2) as b:
        app = make_app(PGPOOL_DSN=b.dsn(), PGPOOL_MAXCONN=2)

        @app.get("/pid")
        def pid() -> Any:
            return str(one(get_db(), "SELECT pg_backend_pid()"))

        client = app.test_client()
        assert len({client.get("/pid").text for _ in range(5)}) == 1
        app.extensions["pgpool"].close(app)


# -- what breaks in transaction mode, and the safe alternative --------------


def test_session_set_is_lost_and_leaks_to_other_clients(client_conn: Callable[..., connection]) -> None:
    a, b = client_conn(), client_conn()
    one(a, "SET myapp.tenant = 'acme'")
    a.commit()  # a committed session SET stays on that server connection
    assert one(b, "SELECT current_setting('myapp.tenant', true)") == "acme"  # b got it: leaked
    # b holds that server inside its transaction, so a's next transaction runs elsewhere.
    assert one(a, "SELECT current_setting('myapp.tenant', true)") in (None, "")  # lost
    a.rollback()
    b.rollback()


def test_set_local_is_safe(
    make_app: Callable[..., Flask], bouncer: PgBouncer, client_conn: Callable[..., connection]
) -> None:
    app = bouncer_app(make_app, bouncer)

    @app.get("/tenant/<name>")
    def tenant(name: str) -> Any:
        db = get_db()
        with db.cursor() as cur:
            # Lives until the end of this transaction, on this server connection only.
            cur.execute("SELECT set_config('myapp.tenant', %s, true)", (name,))
            cur.execute("SELECT current_setting('myapp.tenant', true)")
            seen = fetch_value(cur)
        db.commit()
        return seen

    client = app.test_client()
    assert client.get("/tenant/acme").text == "acme"
    assert client.get("/tenant/globex").text == "globex"
    other = client_conn()
    for _ in range(3):
        assert one(other, "SELECT current_setting('myapp.tenant', true)") in (None, "")
        other.rollback()


def test_startup_options_are_rejected_by_pgbouncer(make_app: Callable[..., Flask], bouncer: PgBouncer) -> None:
    app = bouncer_app(
        make_app,
        bouncer,
        PGPOOL_TIMEOUT=1,
        PGPOOL_CONNECT_ARGS={"options": "-c search_path=myapp,public"},
    )

    @app.get("/")
    def index() -> Any:
        return str(one(get_db(), "SHOW search_path"))

    response = app.test_client().get("/")
    assert response.status_code == 503
    stats = app.extensions["pgpool"].get_stats(app=app)
    assert stats["connections_errors"] >= 1
    assert "unsupported startup parameter: options" in bouncer.log_tail()


def test_ignored_startup_options_are_silently_dropped(
    make_app: Callable[..., Flask], pg_server_dsn: str, tmp_path: Path
) -> None:
    with PgBouncer.start(pg_server_dsn, tmp_path, ignore_startup_parameters="options") as b:
        app = make_app(PGPOOL_DSN=b.dsn(), PGPOOL_CONNECT_ARGS={"options": "-c search_path=myapp,public"})
        with app.app_context():
            assert "myapp" not in one(get_db(), "SHOW search_path")
        app.extensions["pgpool"].close(app)


def test_settings_pgbouncer_applies_to_every_server_connection_work(
    make_app: Callable[..., Flask], pg_server_dsn: str, tmp_path: Path, app_name: str
) -> None:
    # connect_query runs on every new server connection: the same for all clients.
    with PgBouncer.start(
        pg_server_dsn, tmp_path, database_params={"connect_query": "SET search_path = myapp, public"}
    ) as b:
        app = make_app(PGPOOL_DSN=b.dsn(), PGPOOL_MAXCONN=2)

        @app.get("/")
        def index() -> Any:
            db = get_db()
            return jsonify([one(db, "SHOW search_path"), one(db, "SELECT current_setting('application_name')")])

        client = app.test_client()
        for _ in range(3):
            # application_name is a parameter PgBouncer tracks per client: it follows the client.
            assert client.get("/").get_json() == ["myapp, public", app_name]
        app.extensions["pgpool"].close(app)


def test_prepared_statements_break_but_query_parameters_work(
    make_app: Callable[..., Flask], bouncer: PgBouncer, client_conn: Callable[..., connection]
) -> None:
    a, b = client_conn(), client_conn()
    one(a, "PREPARE answer AS SELECT 42")
    a.commit()
    one(b, "SELECT 1")  # b now holds the server that has the statement
    with pytest.raises(psycopg2.errors.InvalidSqlStatementName):  # "does not exist"
        one(a, "EXECUTE answer")
    a.rollback()
    with pytest.raises(psycopg2.errors.DuplicatePreparedStatement):  # and it leaked to b
        one(b, "PREPARE answer AS SELECT 43")
    b.rollback()

    # psycopg2 sends parameters inline: no server-side statement, nothing to lose.
    app = bouncer_app(make_app, bouncer)
    with app.app_context():
        assert one(get_db(), "SELECT %s::int + %s", (40, 2)) == 42


def test_listen_breaks_notify_works(
    bouncer: PgBouncer, client_conn: Callable[..., connection], pg_server_dsn: str, make_app: Callable[..., Flask]
) -> None:
    channel = f"ch_{uuid.uuid4().hex[:8]}"
    through = client_conn()
    through.autocommit = True
    one(through, f"LISTEN {channel}")
    direct = psycopg2.connect(pg_server_dsn)  # the safe way: a dedicated connection, not pooled
    direct.autocommit = True
    try:
        one(direct, f"LISTEN {channel}")
        app = bouncer_app(make_app, bouncer)
        with app.app_context():  # NOTIFY is transactional: it works through PgBouncer
            db = get_db()
            one(db, "SELECT pg_notify(%s, 'hello')", (channel,))
            db.commit()
        assert select.select([direct], [], [], 5)[0], "the direct listener got nothing"
        direct.poll()
        assert [n.payload for n in direct.notifies] == ["hello"]
        select.select([through], [], [], 0.5)
        through.poll()
        assert through.notifies == []  # the LISTEN stayed on a server this client no longer holds
    finally:
        direct.close()


def test_session_advisory_lock_stays_on_the_server(
    make_app: Callable[..., Flask], bouncer: PgBouncer, client_conn: Callable[..., connection], admin: connection
) -> None:
    key = int(uuid.uuid4().int % 2**31)

    def held() -> int:
        return int(one(admin, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = %s", (key,)))

    a, b = client_conn(), client_conn()
    one(a, "SELECT pg_advisory_lock(%s)", (key,))
    a.commit()
    one(b, "SELECT 1")  # b holds the server that holds the lock
    assert one(a, "SELECT pg_advisory_unlock(%s)", (key,)) is False  # "you don't own a lock"
    a.rollback()
    b.rollback()
    assert held() == 1  # nobody can release it now but that server connection

    bouncer.stop()  # closes its server connections, and with them the stray lock
    assert wait_until(lambda: held() == 0)


def test_transaction_advisory_lock_is_released_at_return(
    make_app: Callable[..., Flask], bouncer: PgBouncer, admin: connection
) -> None:
    key = int(uuid.uuid4().int % 2**31)
    app = bouncer_app(make_app, bouncer)
    seen: list[int] = []

    @app.post("/job")
    def job() -> Any:
        with get_db().cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (key,))
            cur.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = %s", (key,))
            seen.append(fetch_value(cur))
        raise RuntimeError("the job failed while holding the lock")

    client = app.test_client()
    assert client.post("/job").status_code == 500
    assert client.post("/job").status_code == 500  # not blocked by a stray lock
    assert seen == [1, 1]
    assert one(admin, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = %s", (key,)) == 0


def test_with_hold_cursor_breaks_but_a_named_cursor_in_the_transaction_works(
    make_app: Callable[..., Flask], bouncer: PgBouncer, client_conn: Callable[..., connection]
) -> None:
    a, b = client_conn(), client_conn()
    with a.cursor() as cur:
        cur.execute("DECLARE big CURSOR WITH HOLD FOR SELECT generate_series(1, 10)")
    a.commit()
    one(b, "SELECT 1")  # b holds the server that has the cursor
    with pytest.raises(psycopg2.errors.InvalidCursorName):
        one(a, "FETCH 1 FROM big")
    a.rollback()
    b.rollback()

    app = bouncer_app(make_app, bouncer)

    @app.get("/sum")
    def total() -> Any:
        # A server-side cursor without hold lives inside the request's transaction.
        with get_db().cursor(name="big_rows") as cur:
            cur.itersize = 100
            cur.execute("SELECT generate_series(1, 1000)")
            return str(sum(row[0] for row in cur))

    assert app.test_client().get("/sum").text == str(sum(range(1, 1001)))



def test_a_reset_on_return_works_in_transaction_mode(make_app: Callable[..., Flask], bouncer: PgBouncer) -> None:
    """PGPOOL_RESET runs in autocommit, so PgBouncer accepts it (on whichever
    server connection serves that statement); requests go on."""
    app = bouncer_app(make_app, bouncer, PGPOOL_RESET="DISCARD ALL", PGPOOL_MAXCONN=2)

    @app.get("/n/<int:n>")
    def n(n: int) -> str:
        return str(one(get_db(), "SELECT %s", (n,)))

    client = app.test_client()
    assert [client.get(f"/n/{i}").text for i in range(5)] == [str(i) for i in range(5)]
    stats = app.extensions["pgpool"].get_stats(app=app)
    assert stats["returns_bad"] == 0 and stats["connections_num"] <= 2
