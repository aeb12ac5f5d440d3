"""DSNs that name several hosts: ``host=a,b port=p,q target_session_attrs=read-write`` and the
URL form ``postgresql://u:p@a:p1,b:p2/db?target_session_attrs=read-write``.

Two private clusters stand for a primary and its fallback; one is stopped, or
made read-only, to show that libpq moves on to the other, and that the pool,
its binds and ``flask pgpool-status`` follow (and say which host answered).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import psycopg2
import pytest
from flask import Flask
from psycopg2.extensions import connection
from support.pgcluster import PgCluster, private_cluster

from flask_pgpool import PgPool, get_db

PASSWORD = "mH-4@pass/word"  # trust authentication: the clusters accept it, the output must not show it


@pytest.fixture(scope="module")
def two_clusters() -> Iterator[tuple[PgCluster, PgCluster]]:
    with private_cluster("multihost-a") as first, private_cluster("multihost-b") as second:
        yield first, second


def set_read_only(pg: PgCluster, read_only: bool) -> None:
    """New sessions of ``pg`` are read-only by default (what libpq's read-write check looks at)."""
    admin = psycopg2.connect(pg.socket_dsn)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"ALTER SYSTEM SET default_transaction_read_only = {'on' if read_only else 'off'}")
        cur.execute("SELECT pg_reload_conf()")
    admin.close()


@pytest.fixture
def clusters(two_clusters: tuple[PgCluster, PgCluster]) -> Iterator[tuple[PgCluster, PgCluster]]:
    """Both clusters up and read-write at the start of the test, and again after it."""
    for pg in two_clusters:
        pg.start()
        set_read_only(pg, False)
    yield two_clusters
    for pg in two_clusters:
        pg.start()
        set_read_only(pg, False)


def keyvalue_dsn(a: PgCluster, b: PgCluster, **extra: str) -> str:
    params = " ".join(f"{k}={v}" for k, v in extra.items())
    return f"host={a.host},{b.host} port={a.port},{b.port} dbname=postgres user=postgres {params}".strip()


def url_dsn(a: PgCluster, b: PgCluster, query: str = "") -> str:
    return f"postgresql://postgres:{quote(PASSWORD, safe='')}@{a.host}:{a.port},{b.host}:{b.port}/postgres{query}"


def server_port(conn: connection) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT inet_server_port()")
        row = cur.fetchone()
    assert row is not None
    return int(row[0])


def status(app: Flask) -> dict[str, Any]:
    result = app.test_cli_runner().invoke(args=["pgpool-status", "--json", "--timeout", "5"])
    assert result.exit_code == 0, result.output
    report: dict[str, Any] = json.loads(result.output)
    return report


@pytest.mark.parametrize("form", ["keyvalue", "url"])
def test_the_first_host_answers_then_the_second_when_it_is_down(
    make_app: Callable[..., Flask], clusters: tuple[PgCluster, PgCluster], form: str
) -> None:
    a, b = clusters
    dsn = keyvalue_dsn(a, b) if form == "keyvalue" else url_dsn(a, b)
    app = make_app(PGPOOL_DSN=dsn, PGPOOL_MINCONN=0, PGPOOL_CONNECT_TIMEOUT=2)
    with app.app_context():
        assert server_port(get_db()) == a.port
    default = status(app)["pools"]["default"]
    assert (default["host"], default["port"]) == (a.host, a.port)

    a.stop()
    # The idle connection to the first host is dead: replaced by one to the second.
    with app.app_context():
        assert server_port(get_db()) == b.port
    report = status(app)
    default = report["pools"]["default"]
    assert (default["reachable"], default["host"], default["port"]) == (True, b.host, b.port)
    text = app.test_cli_runner().invoke(args=["pgpool-status"]).output
    assert f"at {b.host}:{b.port}, answered in" in text
    assert PASSWORD not in text and quote(PASSWORD, safe="") not in text


def test_status_names_why_each_host_failed(
    make_app: Callable[..., Flask], clusters: tuple[PgCluster, PgCluster]
) -> None:
    """A failover shows in the second host's reason: the one-line error keeps every host's."""
    a, b = clusters
    a.stop()
    set_read_only(b, True)
    app = make_app(PGPOOL_DSN=keyvalue_dsn(a, b, target_session_attrs="read-write"), PGPOOL_CONNECT_TIMEOUT=2)
    result = app.test_cli_runner().invoke(args=["pgpool-status", "--timeout", "3"])
    assert result.exit_code == 1
    report = app.test_cli_runner().invoke(args=["pgpool-status", "--json", "--timeout", "3"])
    error = json.loads(report.stdout)["pools"]["default"]["error"]
    assert "\n" not in error
    assert f"port {a.port} failed" in error and f"port {b.port} failed" in error, error
    assert "read-only" in error
    assert PASSWORD not in result.output + error


@pytest.mark.parametrize("form", ["keyvalue", "url"])
def test_read_write_target_skips_a_read_only_server(
    make_app: Callable[..., Flask], clusters: tuple[PgCluster, PgCluster], form: str
) -> None:
    a, b = clusters
    set_read_only(a, True)
    if form == "keyvalue":
        dsn = keyvalue_dsn(a, b, target_session_attrs="read-write")
    else:
        dsn = url_dsn(a, b, "?target_session_attrs=read-write")
    app = make_app(PGPOOL_DSN=dsn, PGPOOL_BINDS={"any": keyvalue_dsn(a, b)})
    with app.app_context():
        assert server_port(get_db()) == b.port
        assert server_port(get_db("any")) == a.port  # no target: the first host
    pools = status(app)["pools"]
    assert (pools["default"]["port"], pools["any"]["port"]) == (b.port, a.port)


def test_a_multihost_bind_is_not_redirected_by_the_main_pools_connect_args(
    make_app: Callable[..., Flask], clusters: tuple[PgCluster, PgCluster], pg_server_dsn: str
) -> None:
    a, b = clusters
    set_read_only(a, True)
    # The main pool names its server in keyword arguments, as some apps do.
    main = psycopg2.extensions.parse_dsn(pg_server_dsn)
    app = make_app(
        PGPOOL_DSN="dbname=postgres",
        PGPOOL_CONNECT_ARGS={k: v for k, v in main.items() if k in ("host", "port", "user", "dbname", "password")},
        PGPOOL_BINDS={"cluster": url_dsn(a, b, "?target_session_attrs=read-write")},
    )
    with app.app_context():
        assert server_port(get_db("cluster")) == b.port


def test_labels_and_masking_name_every_host(
    make_app: Callable[..., Flask], clusters: tuple[PgCluster, PgCluster]
) -> None:
    a, b = clusters
    app = make_app(
        PGPOOL_DSN=keyvalue_dsn(a, b, password="'mH-4@pass/word'", target_session_attrs="read-write"),
        PGPOOL_BINDS={"url": url_dsn(a, b, "?target_session_attrs=read-write")},
    )
    ext: PgPool = app.extensions["pgpool"]
    default, url = ext.get_pool(app=app), ext.get_pool("url", app=app)
    label = f"postgres@{a.host}:{a.port},{b.host}:{b.port}/postgres"
    assert label in repr(default) and label in repr(url)
    assert url.dsn == (
        f"postgresql://postgres:***@{a.host}:{a.port},{b.host}:{b.port}/postgres?target_session_attrs=read-write"
    )
    assert "password=***" in default.dsn and f"port={a.port},{b.port}" in default.dsn
    report = status(app)
    for name in ("default", "url"):
        assert report["pools"][name]["port"] == a.port
    shown = json.dumps(report) + repr(default) + repr(url)
    assert PASSWORD not in shown and quote(PASSWORD, safe="") not in shown and "4@pass" not in shown
