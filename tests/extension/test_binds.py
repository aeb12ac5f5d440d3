"""Several databases: PGPOOL_BINDS, get_db(name), read-only replicas, and the CLI."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.errors
import pytest
from flask import Flask, jsonify
from psycopg2.extensions import connection, make_dsn
from support.netproxy import TcpProxy
from support.pgcluster import PgCluster, private_cluster
from support.poolkit import tcp_settings, via_proxy

from flask_pgpool import ConfigError, PgPool, get_db
from flask_pgpool._cli import status_command


@pytest.fixture(scope="module")
def second_db(pg_server_dsn: str) -> Iterator[str]:
    """A DSN of a second database on the test server (direct, not through PgBouncer)."""
    name = f"pgpool_reports_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(pg_server_dsn)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    try:
        yield make_dsn(pg_server_dsn, dbname=name)
    finally:
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            cur.execute(f"DROP DATABASE IF EXISTS {name}")
        admin.close()


def one(conn: connection, sql: str, params: Any = None) -> Any:
    with conn.cursor() as cur:
        cur.execute(sql, params)
        row = cur.fetchone()
        return row[0] if row else None


def replica_app(make_app: Callable[..., Flask], pg_dsn: str, **replica: Any) -> Flask:
    """An app whose 'replica' bind is the test database, opened read-only."""
    # minconn 0: no background refill, so each pool holds exactly what the requests opened.
    spec = {"dsn": pg_dsn, "read_only": True, "minconn": 0, "maxconn": 2, **replica}
    return make_app(
        PGPOOL_MINCONN=0, PGPOOL_MAXCONN=3, PGPOOL_BINDS={"replica": spec}, PROPAGATE_EXCEPTIONS=False
    )


def test_each_bind_has_its_own_pool_and_stats(make_app: Callable[..., Flask], pg_dsn: str) -> None:
    app = replica_app(make_app, pg_dsn)

    @app.get("/pids")
    def pids() -> Any:
        primary, replica = get_db(), get_db("replica")
        assert get_db("replica") is replica and get_db() is primary  # one per bind per request
        one(primary, "SELECT 1")
        one(replica, "SELECT 1")
        # The client connection's identity (the server's pid, or PgBouncer's stand-in for it).
        return jsonify([primary.info.backend_pid, replica.info.backend_pid])

    client = app.test_client()
    primary_pid, replica_pid = client.get("/pids").get_json()
    assert primary_pid != replica_pid
    ext: PgPool = app.extensions["pgpool"]
    pools = ext.get_pools(app)
    assert set(pools) == {"default", "replica"}
    assert pools["default"] is not pools["replica"]
    assert pools["replica"].maxconn == 2 and pools["default"].maxconn == 3
    assert client.get("/pids").get_json() == [primary_pid, replica_pid]  # both were pooled
    for name in ("default", "replica"):
        stats = ext.get_stats(name, app=app)
        assert stats["requests_num"] == 2
        assert stats["pool_size"] == stats["pool_available"] == 1  # returned at teardown


def test_a_bind_may_be_another_database(make_app: Callable[..., Flask], second_db: str) -> None:
    app = make_app(PGPOOL_BINDS={"reports": second_db})
    with app.app_context():
        assert one(get_db("reports"), "SELECT current_database()").startswith("pgpool_reports_")
        assert not one(get_db(), "SELECT current_database()").startswith("pgpool_reports_")


def test_writes_through_a_read_only_bind_fail_and_the_connection_is_returned(
    make_app: Callable[..., Flask], pg_dsn: str, table: str
) -> None:
    app = replica_app(make_app, pg_dsn)

    @app.post("/write/<bind>")
    def write(bind: str) -> Any:
        db = get_db(None if bind == "primary" else bind)
        with db, db.cursor() as cur:
            cur.execute(f"INSERT INTO {table} (note) VALUES (%s)", (bind,))
        return "", 204

    @app.post("/write-after-commit")
    def write_after_commit() -> Any:
        db = get_db("replica")
        db.commit()  # every new transaction is read-only, not only the first
        with db, db.cursor() as cur:
            cur.execute(f"INSERT INTO {table} (note) VALUES ('again')")
        return "", 204

    @app.get("/read")
    def read() -> Any:
        return str(one(get_db("replica"), f"SELECT count(*) FROM {table}"))

    errors: list[BaseException] = []

    def read_only(error: psycopg2.Error) -> tuple[str, int]:
        errors.append(error)
        return "read-only", 409

    app.register_error_handler(psycopg2.Error, read_only)
    client = app.test_client()
    assert client.post("/write/primary").status_code == 204
    assert client.post("/write/replica").status_code == 409
    assert client.post("/write-after-commit").status_code == 409
    assert [type(e) for e in errors] == [psycopg2.errors.ReadOnlySqlTransaction] * 2
    assert client.get("/read").text == "1"  # the replica connection still works
    stats = app.extensions["pgpool"].get_stats("replica", app=app)
    assert stats["returns_bad"] == 0
    assert stats["pool_size"] == stats["pool_available"] == 1  # the same connection, back in the pool


def test_both_binds_are_returned_even_when_the_view_fails(make_app: Callable[..., Flask], pg_dsn: str) -> None:
    app = replica_app(make_app, pg_dsn)

    @app.get("/boom")
    def boom() -> Any:
        get_db()
        get_db("replica")
        raise RuntimeError("boom")

    assert app.test_client().get("/boom").status_code == 500
    ext: PgPool = app.extensions["pgpool"]
    for name in ("default", "replica"):
        stats = ext.get_stats(name, app=app)
        assert stats["pool_size"] == stats["pool_available"] == 1, (name, stats)


def test_an_unknown_bind_name_is_a_clear_error(make_app: Callable[..., Flask], pg_dsn: str) -> None:
    app = replica_app(make_app, pg_dsn)
    with app.app_context(), pytest.raises(KeyError) as info:
        get_db("replcia")
    message = str(info.value)
    assert "'replcia'" in message and "'replica'" in message and "PGPOOL_BINDS" in message


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"dsn": "host=h", "maxconn": 0}, "PGPOOL_BINDS['replica']['maxconn']"),
        ({"dsn": "host=h", "read_only": "maybe"}, "PGPOOL_BINDS['replica']['read_only']"),
        ({"dsn": "host=h", "readonly": True}, "PGPOOL_BINDS['replica'] has an unknown option 'readonly'"),
        ({"dsn": "host=h", "timeout": -1}, "PGPOOL_BINDS['replica']['timeout']"),
        ({"maxconn": 2}, "PGPOOL_BINDS['replica'] needs a 'dsn'"),
        ({"dsn": "host=h", "minconn": 3, "maxconn": 2}, "PGPOOL_BINDS['replica']: minconn (3)"),
        ({"dsn": "host=h", "retry_after": 3}, "PGPOOL_BINDS['replica'] has an unknown option 'retry_after'"),
        (42, "PGPOOL_BINDS['replica'] must be a DSN string or a dict"),
    ],
)
def test_bind_config_errors_name_the_bind_and_the_key(
    make_app: Callable[..., Flask], spec: Any, expected: str
) -> None:
    with pytest.raises(ConfigError) as info:
        make_app(PGPOOL_BINDS={"replica": spec})
    assert expected in str(info.value)


def test_status_shows_every_bind(make_app: Callable[..., Flask], pg_dsn: str) -> None:
    app = replica_app(make_app, pg_dsn)
    runner = app.test_cli_runner()
    text = runner.invoke(status_command, [])
    assert text.exit_code == 0, text.output
    assert "pool default:" in text.output and "pool replica:" in text.output
    assert text.output.count("connections min") == 2
    assert "min 0, max 2:" in text.output and "min 0, max 3:" in text.output  # each bind's own sizes
    result = runner.invoke(status_command, ["--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["ok"] is True
    assert set(report["pools"]) == {"default", "replica"}
    assert report["pools"]["replica"]["max"] == 2 and report["pools"]["default"]["max"] == 3
    assert all(p["reachable"] for p in report["pools"].values())


def test_status_fails_when_one_bind_is_unreachable(make_app: Callable[..., Flask], pg_dsn: str) -> None:
    app = make_app(
        PGPOOL_BINDS={"replica": {"dsn": "host=127.0.0.1 port=1 user=app password=s3cret-pw", "timeout": 1}},
    )
    result = app.test_cli_runner().invoke(status_command, ["--timeout", "1"])
    assert result.exit_code == 1
    assert "pool default:" in result.output and "UNREACHABLE" in result.output
    assert "pool 'replica'" in result.output  # the one-line error names the bind
    assert "s3cret-pw" not in result.output


def test_status_prints_the_numbers_for_sizing(make_app: Callable[..., Flask], admin: connection) -> None:
    app = make_app(PGPOOL_MAXCONN=7)
    max_connections = int(one(admin, "SHOW max_connections"))
    text = app.test_cli_runner().invoke(status_command, [])
    assert text.exit_code == 0, text.output
    assert f"up to 7 connections per process; server max_connections {max_connections}," in text.output
    report = json.loads(app.test_cli_runner().invoke(status_command, ["--json"]).output)["pools"]["default"]
    assert report["server_max_connections"] == max_connections
    # At least the admin session and the status command's own are open.
    assert report["server_sessions"] >= 2


# -- each bind connects as itself ------------------------------------------------------


def server_says(conn: connection, what: str) -> Any:
    return one(conn, f"SELECT {what}")


@pytest.fixture(scope="module")
def other_role(pg_server_dsn: str) -> Iterator[tuple[str, str]]:
    """A second login role with a password on the test server: (name, password)."""
    name, password = f"pgpool_other_{uuid.uuid4().hex[:8]}", "other-role-secret"
    admin = psycopg2.connect(pg_server_dsn)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"CREATE ROLE {name} LOGIN PASSWORD %s", (password,))
    try:
        yield name, password
    finally:
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (name,))
            cur.execute(f"DROP ROLE IF EXISTS {name}")
        admin.close()


def test_a_bind_connects_as_the_role_of_its_own_dsn(
    make_app: Callable[..., Flask], pg_server_dsn: str, admin: connection, app_name: str, other_role: tuple[str, str]
) -> None:
    role, password = other_role
    main_user = server_says(admin, "current_user")
    app = make_app(
        PGPOOL_DSN=pg_server_dsn,
        # Identity given as keyword arguments, as apps often pass a password.
        PGPOOL_CONNECT_ARGS={"application_name": app_name, "user": main_user, "password": "main-secret"},
        PGPOOL_BINDS={"other": make_dsn(pg_server_dsn, user=role, password=password)},
    )
    with app.app_context():
        assert server_says(get_db(), "current_user") == main_user
        assert server_says(get_db("other"), "current_user") == role
        # What is not about identity the bind does take from the main pool.
        assert server_says(get_db("other"), "current_setting('application_name')") == app_name


def test_the_bind_dsn_wins_over_inherited_connect_args(
    make_app: Callable[..., Flask], pg_server_dsn: str, app_name: str
) -> None:
    app = make_app(
        PGPOOL_DSN=pg_server_dsn,
        PGPOOL_BINDS={
            "named": make_dsn(pg_server_dsn, application_name=f"{app_name}-named"),
            "own_args": {"dsn": pg_server_dsn, "connect_args": {"application_name": f"{app_name}-args"}},
        },
    )
    with app.app_context():
        assert server_says(get_db(), "current_setting('application_name')") == app_name
        assert server_says(get_db("named"), "current_setting('application_name')") == f"{app_name}-named"
        assert server_says(get_db("own_args"), "current_setting('application_name')") == f"{app_name}-args"


def test_pgpool_connect_args_and_the_config_are_merged(
    make_app: Callable[..., Flask], pg_server_dsn: str, app_name: str
) -> None:
    ext = PgPool(connect_args={"application_name": "from-the-option", "options": "-c statement_timeout=4321"})
    app = make_app(ext, PGPOOL_DSN=pg_server_dsn, PGPOOL_CONNECT_ARGS={"application_name": app_name})
    with app.app_context():
        # The config wins key by key; the option's other keys stay.
        assert server_says(get_db(), "current_setting('application_name')") == app_name
        assert server_says(get_db(), "current_setting('statement_timeout')") == "4321ms"


# A private cluster that checks passwords (scram-sha-256 over TCP), unlike the test server.
MAIN_PASSWORD, REPORTER_PASSWORD = "main-pw-9f2", "reporter-pw-4c7"


@pytest.fixture(scope="module")
def password_cluster() -> Iterator[PgCluster]:
    with private_cluster("binds-scram") as pg:
        admin = psycopg2.connect(pg.socket_dsn)
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute("SET password_encryption = 'scram-sha-256'")
            cur.execute("ALTER ROLE postgres PASSWORD %s", (MAIN_PASSWORD,))
            cur.execute("CREATE ROLE reporter LOGIN PASSWORD %s", (REPORTER_PASSWORD,))
        (pg.data_dir / "pg_hba.conf").write_text(
            "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n"
        )
        with admin.cursor() as cur:
            cur.execute("SELECT pg_reload_conf()")
        admin.close()
        yield pg


def test_a_bind_sends_its_own_password(make_app: Callable[..., Flask], password_cluster: PgCluster) -> None:
    pg = password_cluster
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(pg.dsn, password="wrong", connect_timeout=5).close()
    app = make_app(
        PGPOOL_DSN=pg.dsn,
        PGPOOL_CONNECT_ARGS={"password": MAIN_PASSWORD},
        PGPOOL_TIMEOUT=3,
        PGPOOL_BINDS={"reports": f"{make_dsn(pg.dsn, user='reporter')} password={REPORTER_PASSWORD}"},
    )
    with app.app_context():
        assert server_says(get_db(), "current_user") == "postgres"
        assert server_says(get_db("reports"), "current_user") == "reporter"
    result = app.test_cli_runner().invoke(status_command, [])
    assert result.exit_code == 0, result.output
    assert MAIN_PASSWORD not in result.output and REPORTER_PASSWORD not in result.output


def test_a_binds_own_network_timeout_beats_keepalives_inherited_from_the_app(
    make_app: Callable[..., Flask], pg_dsn: str, proxy: TcpProxy
) -> None:
    """The app's PGPOOL_CONNECT_ARGS set the main pool's keepalives; a bind
    that sets its own network_timeout gets that bound, not the app's values.
    A bind that sets none takes the app's values, as it takes the rest."""
    tcp = via_proxy(pg_dsn, proxy)
    app = make_app(
        PGPOOL_DSN=tcp,
        PGPOOL_MINCONN=0,
        PGPOOL_CONNECT_ARGS={"keepalives_idle": 60},
        PGPOOL_BINDS={
            "own_bound": {"dsn": tcp, "network_timeout": 6, "minconn": 0},
            "inherits": {"dsn": tcp, "minconn": 0},
        },
    )
    ext = app.extensions["pgpool"]

    def settings(bind: str) -> dict[str, int]:
        pool = ext.get_pool(bind, app=app)
        conn = pool.getconn()
        try:
            assert one(conn, "SELECT 1") == 1
            return tcp_settings(conn)
        finally:
            pool.putconn(conn)

    assert settings("own_bound") == {
        "keepalives": 1,
        "keepalives_idle": 2,
        "keepalives_interval": 1,
        "keepalives_count": 4,
        "tcp_user_timeout": 6_000,
    }
    for bind in ("default", "inherits"):
        found = settings(bind)
        assert (found["keepalives_idle"], found["tcp_user_timeout"]) == (60, 0), bind


@pytest.mark.parametrize(
    ("own", "expected"),
    [
        ({"connect_args": {"tcp_user_timeout": 7000}}, {"tcp_user_timeout": 7000}),
        ({"dsn_keys": {"keepalives_count": 3}}, {"keepalives_count": 3}),
        ({"dsn_keys": {"service": "pgpool_bind_keepalives"}}, {"keepalives_count": 5}),
        ({"connect_args": {"service": "pgpool_bind_keepalives"}}, {"keepalives_count": 5}),
    ],
    ids=["in-connect-args", "in-the-dsn", "in-its-service", "in-the-service-of-its-connect-args"],
)
def test_a_binds_own_keepalive_settings_are_not_mixed_with_the_apps(
    make_app: Callable[..., Flask],
    pg_dsn: str,
    proxy: TcpProxy,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    own: dict[str, Any],
    expected: dict[str, int],
) -> None:
    """A keepalive parameter the user sets is the whole bound: the app's
    keepalive values (here keepalives_idle) must not be added to a bind's own."""
    services = tmp_path / "pg_service.conf"
    services.write_text("[pgpool_bind_keepalives]\nkeepalives_count=5\n")
    monkeypatch.setenv("PGSERVICEFILE", str(services))
    tcp = via_proxy(pg_dsn, proxy)
    bind: dict[str, Any] = {"dsn": make_dsn(tcp, **own.get("dsn_keys", {})), "minconn": 0}
    if "connect_args" in own:
        bind["connect_args"] = own["connect_args"]
    app = make_app(
        PGPOOL_DSN=tcp, PGPOOL_MINCONN=0, PGPOOL_CONNECT_ARGS={"keepalives_idle": 60}, PGPOOL_BINDS={"own": bind}
    )
    pool = app.extensions["pgpool"].get_pool("own", app=app)
    conn = pool.getconn()
    try:
        assert one(conn, "SELECT 1") == 1
        found = tcp_settings(conn)
    finally:
        pool.putconn(conn)
    for key, value in expected.items():
        assert found[key] == value, found
    assert found["keepalives_idle"] != 60, found
