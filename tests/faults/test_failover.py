"""Failover and rotating credentials, through Flask requests under a load of reads and writes.

A primary and a streaming standby (``pg_basebackup -R``) on private clusters;
the app's DSN names both with ``target_session_attrs=read-write``. Each test
keeps the app busy, moves the primary, and then looks at every request: none
may fail once the promotion has finished, every acknowledged write must be on
the new primary, and none may be answered by the old one afterwards.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg2
import pytest
from support.credentials import add_password_role, app_sessions, server_now, set_password
from support.faults import pool_of
from support.pgcluster import PgCluster, private_cluster
from support.replication import ReplicatedPair, execute, replicated_pair
from support.switchover import committed_tokens, fence_and_promote, stop_and_promote, warm_up
from support.writeload import Figures, Load, create_table, load_app, successes_since

from flask_pgpool import PgPool

pytestmark = pytest.mark.slow

MAXCONN = 4


@pytest.fixture
def pair() -> Iterator[ReplicatedPair]:
    with replicated_pair("failover") as replicated:
        yield replicated


@pytest.fixture
def table(pair: ReplicatedPair) -> str:
    name = f"w_{uuid.uuid4().hex[:12]}"
    conn = psycopg2.connect(pair.primary.dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        create_table(cur, name)
    conn.close()
    return name


def failover_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "flask_pgpool" and r.levelno == logging.WARNING and "failover" in r.getMessage()
    ]


def test_fenced_primary_each_connection_fails_at_most_once(
    pair: ReplicatedPair, table: str, app_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Fenced read-only with its sessions kept, then the standby promoted: after the promotion
    every write reaches the new primary and none fails."""
    caplog.set_level(logging.INFO, logger="flask_pgpool")
    app = load_app(pair.dsn(), table, app_name, PGPOOL_MAXCONN=MAXCONN, PGPOOL_MINCONN=MAXCONN)
    with Load(app, threads=6) as load:
        warm_up(load)
        timeline = fence_and_promote(pair, load, fenced_for=1.5)
        outcomes = load.stop()
    figures = Figures.of(
        outcomes,
        promote_started=timeline.promote_started,
        promoted=timeline.promoted,
        old_port=timeline.old_port,
        committed=committed_tokens(pair, table),
    )
    assert figures.failed_after == 0, figures
    assert figures.refused_writes <= MAXCONN, figures
    assert figures.old_server_after == 0, figures
    assert figures.lost_writes == 0, figures
    assert figures.first_write_after is not None, figures
    assert all(o.port == timeline.new_port for o in outcomes if o.ok and o.started >= timeline.promoted)
    # Said once, whatever the number of connections found on the fenced server.
    assert len(failover_warnings(caplog)) == 1, failover_warnings(caplog)
    assert any("connected to a writable server" in r.getMessage() for r in caplog.records)
    pool_of(app).closeall()


def test_stopped_primary_then_rejoined_as_standby(pair: ReplicatedPair, table: str, app_name: str) -> None:
    """Stopped (its sessions killed), the standby promoted, the old primary back as a standby:
    no request fails after the promotion and none reaches the old primary again."""
    app = load_app(pair.dsn(), table, app_name, PGPOOL_MAXCONN=MAXCONN, PGPOOL_MINCONN=MAXCONN)
    with Load(app, threads=6) as load:
        warm_up(load)
        timeline = stop_and_promote(pair, load, down_for=1.0)
        outcomes = load.stop()
    figures = Figures.of(
        outcomes,
        promote_started=timeline.promote_started,
        promoted=timeline.promoted,
        old_port=timeline.old_port,
        committed=committed_tokens(pair, table),
    )
    assert pair.standby.port == timeline.old_port  # rejoined, streaming from the new primary
    assert figures.failed_after == 0, figures
    assert figures.refused_writes == 0, figures
    assert figures.old_server_after == 0, figures
    assert figures.lost_writes == 0, figures
    assert figures.first_write_after is not None, figures
    pool_of(app).closeall()


def test_fenced_while_idle_no_request_fails(pair: ReplicatedPair, table: str, app_name: str) -> None:
    """Fenced and promoted while the app was idle: the pool finds its connections on the
    read-only server when it pings them, and the first requests after succeed."""
    app = load_app(pair.dsn(), table, app_name, PGPOOL_MAXCONN=MAXCONN, PGPOOL_MINCONN=MAXCONN, PGPOOL_PING_AFTER=0)
    with Load(app, threads=MAXCONN) as load:
        warm_up(load)
        load.stop()
    old, new = pair.primary, pair.standby
    pair.fence(old)
    pair.wait_replayed(old)
    new.promote()
    with Load(app, threads=MAXCONN) as load:
        warm_up(load)
        outcomes = load.stop()
    assert [o for o in outcomes if not o.ok] == []
    assert {o.port for o in outcomes} == {new.port}
    pool_of(app).closeall()


# -- rotating credentials ----------------------------------------------------------


@pytest.fixture(scope="module")
def password_cluster() -> Iterator[PgCluster]:
    with private_cluster("rotation") as pg:
        yield pg


@pytest.mark.parametrize(
    ("method", "source"),
    [("scram-sha-256", "dsn"), ("md5", "connect_args")],
)
def test_rotated_password_drain_then_revoke_fails_no_request(
    password_cluster: PgCluster, app_name: str, method: str, source: str
) -> None:
    """The password changes (the old one is refused from then on), the callable returns the
    new one, drain(): every session opened with the old password ends, and no request fails."""
    pg = password_cluster
    role = f"rotating_{method.split('-')[0]}"
    secret = {"password": f"old-{uuid.uuid4().hex}"}
    add_password_role(pg, role, secret["password"], method)
    table = f"r_{uuid.uuid4().hex[:12]}"
    execute(pg, f"CREATE TABLE {table} (id bigserial PRIMARY KEY, token text NOT NULL UNIQUE)")
    execute(pg, f"GRANT ALL ON {table}, {table}_id_seq TO {role}")
    base = f"host={pg.host} port={pg.port} dbname={pg.dbname} user={role}"
    calls: list[str] = []
    sizes = {"PGPOOL_MAXCONN": MAXCONN, "PGPOOL_MINCONN": 2}
    if source == "dsn":

        def dsn() -> str:
            calls.append(secret["password"])
            return f"{base} password={secret['password']}"

        app = load_app(dsn, table, app_name, **sizes)
    else:

        def connect_args() -> dict[str, str]:
            calls.append(secret["password"])
            return {"password": secret["password"], "application_name": app_name}

        app = load_app(base, table, app_name, PGPOOL_CONNECT_ARGS=connect_args, **sizes)
    ext: PgPool = app.extensions["pgpool"]
    pool = pool_of(app)
    old = secret["password"]
    with Load(app, threads=6) as load:
        warm_up(load)
        opened_with_old = app_sessions(pg, app_name)
        assert opened_with_old
        new = f"new-{uuid.uuid4().hex}"
        set_password(pg, role, new, method)  # from now on the old password is refused
        secret["password"] = new
        drained_at = server_now(pg)
        ext.drain(app)
        # Every session opened with the old password ends, idle ones at once, the others with their request.
        _wait(lambda: _all_after(app_sessions(pg, app_name), drained_at), "the old sessions to end")
        assert not set(app_sessions(pg, app_name)) & set(opened_with_old)
        after = time.monotonic()
        load.wait_for(lambda o: successes_since(after)(o) >= 20, timeout=30, what="requests after the rotation")
        outcomes = load.stop()
    assert [o for o in outcomes if not o.ok] == []
    assert calls[-1] == new and old in calls
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(f"{base} password={old}", connect_timeout=5).close()
    # Both secrets are masked wherever the pool shows a message.
    assert pool.redact(f"failed with {old} and {new}") == "failed with *** and ***"
    ext.close(app)


def _all_after(sessions: dict[int, Any], moment: Any) -> bool:
    return bool(sessions) and all(start > moment for start in sessions.values())


def _wait(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)
