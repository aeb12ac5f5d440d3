"""``flask pgpool-status``: what it shows, and that it never shows the password."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlencode

import psycopg2.extensions
import pytest
from flask import Flask
from support.netproxy import TcpProxy
from support.poolkit import via_proxy

from flask_pgpool import STATS_KEYS
from flask_pgpool._health import ping

PASSWORD = "C0rrect-Horse-cli"


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def dsn_with_password(pg_dsn: str) -> str:
    # The test servers trust local connections: any password is accepted.
    return psycopg2.extensions.make_dsn(pg_dsn, password=PASSWORD)


@pytest.fixture
def unreachable_dsn() -> str:
    return f"host=127.0.0.1 port={closed_port()} dbname=app user=app password={PASSWORD} connect_timeout=2"


def status(app: Flask, *args: str) -> tuple[int, str, str]:
    result = app.test_cli_runner().invoke(args=["pgpool-status", *args])
    return result.exit_code, result.stdout, result.stderr


def test_status_of_the_app_fixture(app: Flask) -> None:
    result = app.test_cli_runner().invoke(args=["pgpool-status"])
    assert result.exit_code == 0, result.output
    assert "pool default:" in result.stdout
    assert "min 1, max 4" in result.stdout


def test_reachable_database(make_app: Callable[..., Flask], dsn_with_password: str) -> None:
    app = make_app(PGPOOL_DSN=dsn_with_password, PGPOOL_MINCONN=0, PGPOOL_MAXCONN=3)
    code, out, err = status(app)
    assert code == 0, out + err
    assert err == ""
    assert PASSWORD not in out
    assert "password=***" in out
    assert "server      PostgreSQL " in out
    assert "answered in" in out
    assert "connections min 0, max 3: 0 in use, 1 idle, 0 waiting" in out
    # The command made one real round trip through the pool.
    assert "requests_num=1" in out
    assert "connections_num=1" in out


def test_status_counts_connections_in_use(make_app: Callable[..., Flask]) -> None:
    app = make_app(PGPOOL_MAXCONN=3)
    pool = app.extensions["pgpool"].get_pool(app=app)
    held = pool.getconn()
    try:
        code, out, _ = status(app)
    finally:
        pool.putconn(held)
    assert code == 0
    assert "1 in use, 1 idle, 0 waiting" in out


def test_json_has_the_same_facts(make_app: Callable[..., Flask], pg_dsn: str) -> None:
    app = make_app(PGPOOL_MAXCONN=3, PGPOOL_BINDS={"reports": {"dsn": pg_dsn, "maxconn": 2}})
    code, out, err = status(app, "--json")
    assert code == 0, out + err
    report = json.loads(out)
    assert report["ok"] is True
    assert list(report["pools"]) == ["default", "reports"]
    default = report["pools"]["default"]
    assert default["reachable"] is True
    assert default["error"] is None
    assert default["server_version"]
    assert default["round_trip_ms"] >= 0
    assert (default["min"], default["max"], default["in_use"], default["idle"], default["waiting"]) == (1, 3, 0, 1, 0)
    assert tuple(default["stats"]) == STATS_KEYS
    assert default["stats"]["requests_num"] == 1
    assert report["pools"]["reports"]["max"] == 2


def test_json_masks_a_url_password(make_app: Callable[..., Flask], pg_dsn: str) -> None:
    params = psycopg2.extensions.parse_dsn(pg_dsn)
    user = params.get("user", "postgres")
    # Host and port as query parameters: they work for a TCP host and a socket directory alike.
    query = urlencode({str(k): params[k] for k in ("host", "port") if k in params})
    url = f"postgresql://{user}:{PASSWORD}@/{params.get('dbname', 'postgres')}?{query}"
    app = make_app(PGPOOL_DSN=url)
    code, out, err = status(app, "--json")
    assert code == 0, out + err
    assert PASSWORD not in out
    assert json.loads(out)["pools"]["default"]["dsn"].startswith(f"postgresql://{user}:***@/")


def test_unreachable_database(make_app: Callable[..., Flask], unreachable_dsn: str) -> None:
    app = make_app(PGPOOL_DSN=unreachable_dsn)
    code, out, err = status(app, "--timeout", "1")
    assert code != 0
    assert err.count("\n") == 1, err
    assert err.startswith("Error: pool 'default': could not connect")
    assert "Connection refused" in err
    assert "UNREACHABLE" in out
    assert "password=***" in out
    for text in (out, err):
        assert PASSWORD not in text
        assert "Traceback" not in text


def test_unreachable_database_json(make_app: Callable[..., Flask], unreachable_dsn: str) -> None:
    app = make_app(PGPOOL_DSN=unreachable_dsn)
    code, out, err = status(app, "--json", "--timeout", "1")
    assert code != 0
    report = json.loads(out)
    assert report["ok"] is False
    default = report["pools"]["default"]
    assert default["reachable"] is False
    assert "Connection refused" in default["error"]
    assert default["stats"]["connections_errors"] >= 1
    assert PASSWORD not in out + err


@pytest.mark.slow
def test_the_real_command_prints_one_line_when_unreachable(tmp_path: Path, unreachable_dsn: str) -> None:
    # Through `flask`, as a user runs it: no pytest logging handlers catch the pool's warnings.
    (tmp_path / "statusapp.py").write_text(
        textwrap.dedent(
            """
            import os
            from flask import Flask
            from flask_pgpool import PgPool

            app = Flask(__name__)
            app.config["PGPOOL_DSN"] = os.environ["STATUS_DSN"]
            PgPool(app)
            """
        )
    )
    env = {**os.environ, "STATUS_DSN": unreachable_dsn}
    env.pop("FLASK_APP", None)
    done = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "statusapp", "pgpool-status", "--timeout", "1"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("Error: pool 'default': could not connect")
    assert PASSWORD not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr


def test_app_without_pgpool(tmp_path: Path) -> None:
    from flask_pgpool._cli import status_command

    app = Flask(__name__)
    app.cli.add_command(status_command)
    code, _, err = status(app)
    assert code == 1
    assert err == "Error: flask-pgpool is not set up on this app\n"


def test_a_path_that_goes_silent_after_the_ping_is_bounded_by_the_timeout(
    make_app: Callable[..., Flask], pg_dsn: str, proxy: TcpProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every exchange of the command gives up after --timeout: here the path
    answers nothing once the ping is through, while the sizing query is sent
    (the proxy's kernel acknowledges everything: TCP alone would wait forever)."""
    app = make_app(PGPOOL_DSN=via_proxy(pg_dsn, proxy), PGPOOL_MINCONN=0, PGPOOL_NETWORK_TIMEOUT=0)


    def ping_then_silence(conn: psycopg2.extensions.connection, timeout: float) -> bool:
        answered = ping(conn, timeout)
        proxy.blackhole()
        return answered

    monkeypatch.setattr("flask_pgpool._cli.ping", ping_then_silence)
    outcome: list[tuple[int, str, str]] = []
    started = time.monotonic()
    command = threading.Thread(target=lambda: outcome.append(status(app, "--json", "--timeout", "2")), daemon=True)
    command.start()
    command.join(15)
    elapsed = time.monotonic() - started
    proxy.drop()  # frees a command still stuck, whatever happened
    command.join(5)
    assert outcome and elapsed < 2 + 4, f"the command still waited after {elapsed:.1f} s with --timeout 2"
    code, out, err = outcome[0]
    assert code == 0, out + err  # the database answered its ping: it is reachable
    pool = json.loads(out)["pools"]["default"]
    assert pool["reachable"] and pool["server_max_connections"] is None  # the sizing gave up
    assert pool["stats"]["returns_bad"] == 0  # the connection it cut was closed, not returned broken
