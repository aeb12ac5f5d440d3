"""The password never shows: not in logs (any level, any logger), exception
messages, repr(), stats, ``flask pgpool-status`` (text and --json) or HTTP
responses, whether the database is reachable or not.

The password is given as a key=value DSN, as a URL (URL-encoded, with special
characters), as a URL query parameter, and in PGPOOL_CONNECT_ARGS. The test
servers use trust authentication, so any password is accepted. Everything the
app and the pool produce is captured and searched for the password's
distinctive part in any encoding.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import traceback
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import psycopg2
import pytest
from flask import Flask
from psycopg2.extensions import parse_dsn

from flask_pgpool import ConfigError, PgPool, get_db

PASSWORD = "S3cr3t-p@ss/word"
ENCODED = quote(PASSWORD, safe="")  # S3cr3t-p%40ss%2Fword
# Any text that holds one of these holds (part of) the password.
MARKERS = ["S3cr3t", PASSWORD, ENCODED, quote(PASSWORD), "p@ss/word", "p%40ss"]

LOGGERS = ["", "flask_pgpool", "psycopg2", "werkzeug", "flask", "flask.app", "secrets_app"]


def assert_no_password(texts: list[str]) -> None:
    assert texts
    for text in texts:
        for marker in MARKERS:
            assert marker.lower() not in text.lower(), f"password found in: {text[:2000]}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def dsn_forms(pg_dsn: str, reachable: bool) -> dict[str, tuple[str, dict[str, Any]]]:
    """name: (DSN, PGPOOL_CONNECT_ARGS), each carrying the password."""
    params = parse_dsn(pg_dsn)
    if reachable:
        host, port = params.get("host", "localhost"), params.get("port", "5432")
    else:
        host, port = "127.0.0.1", str(free_port())  # nothing listens there
    user, dbname = params.get("user", "postgres"), params.get("dbname", "postgres")
    qhost = quote(host, safe="")
    return {
        "keyvalue": (f"host={host} port={port} user={user} dbname={dbname} password='{PASSWORD}'", {}),
        "url": (f"postgresql://{user}:{ENCODED}@/{dbname}?host={qhost}&port={port}", {}),
        "url_query": (f"postgresql:///{dbname}?host={qhost}&port={port}&user={user}&password={ENCODED}", {}),
        "connect_args": (f"host={host} port={port} user={user} dbname={dbname}", {"password": PASSWORD}),
    }


def require_trust_auth(dsn: str, connect_args: dict[str, Any]) -> None:
    """The reachable cases give the server our made-up password: it must accept any."""
    try:
        psycopg2.connect(dsn, connect_timeout=5, **connect_args).close()
    except psycopg2.OperationalError:
        pytest.skip("the test server does not accept any password (trust authentication)")


@pytest.fixture
def capture(caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> Iterator[Callable[[], list[str]]]:
    """Every log record at DEBUG and above, from every logger, and all fd output."""
    for name in LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name or None)

    def captured() -> list[str]:
        out, err = capfd.readouterr()
        records = [
            f"{r.name} {r.levelname} {r.getMessage()} {r.exc_text or ''} {r.stack_info or ''}" for r in caplog.records
        ]
        formatted = [
            "".join(traceback.format_exception(*r.exc_info)) for r in caplog.records if r.exc_info and r.exc_info[1]
        ]
        return [caplog.text, out, err, *records, *formatted]

    yield captured


def secret_app(dsn: str, connect_args: dict[str, Any], app_name: str, **config: Any) -> Flask:
    app = Flask("secrets_app")
    app.config.update(
        TESTING=False,
        PGPOOL_DSN=dsn,
        PGPOOL_CONNECT_ARGS={"application_name": app_name, **connect_args},
        PGPOOL_TIMEOUT=1,
        PGPOOL_CONNECT_TIMEOUT=2,
        PGPOOL_MAXCONN=2,
        PGPOOL_LEAK_TIMEOUT=0.2,  # so the leak warning (with a stack) is logged too
    )
    app.config.update(config)
    PgPool(app)

    @app.get("/one")
    def one() -> str:
        with get_db().cursor() as cur:
            cur.execute("SELECT 1")
        return "ok"

    @app.get("/conn")
    def conn() -> str:
        db = get_db()
        return f"{db!r} {db.dsn} {db.get_dsn_parameters()}"

    @app.get("/sqlerror")
    def sqlerror() -> str:
        with get_db().cursor() as cur:
            cur.execute("SELECT 1 / 0")
        return "unreachable"

    @app.get("/boom")
    def boom() -> str:
        get_db()
        raise RuntimeError("the view failed")

    @app.get("/slow")
    def slow() -> str:
        import time

        get_db()
        # Held beyond PGPOOL_LEAK_TIMEOUT: until the leak warning is logged
        # when the test can tell, busy machine or not.
        leak_logged = app.config.get("LEAK_LOGGED") or (lambda: True)
        deadline = time.monotonic() + 10
        time.sleep(0.6)
        while not leak_logged() and time.monotonic() < deadline:
            time.sleep(0.02)
        return "slow"

    return app


def everything_shown(app: Flask, reachable: bool) -> list[str]:
    """The texts a user, a log reader or a client can see from this app."""
    pgpool: PgPool = app.extensions["pgpool"]
    pool = pgpool.get_pool(app=app)
    texts: list[str] = []
    client = app.test_client()
    # Unreachable, each request waits PGPOOL_TIMEOUT for its 503: ask less.
    paths = ["/one", "/sqlerror", "/boom", "/nope", "/conn", "/slow"] if reachable else ["/one", "/nope"]
    for path in paths:
        response = client.get(path)
        texts.append(f"{response.status} {response.headers} {response.get_data(as_text=True)}")
        assert response.status_code != 503 or response.headers["Retry-After"]
    if not reachable:
        assert texts[0].startswith("503")

    runner = app.test_cli_runner()
    for args in (["pgpool-status", "--timeout", "1"], ["pgpool-status", "--json", "--timeout", "1"]):
        result = runner.invoke(args=args)
        assert result.exit_code == (0 if reachable else 1), result.output
        texts += [result.output, repr(result.exception)]
        if "--json" in args and reachable:
            assert json.loads(result.output)["ok"] is True
    texts += [repr(pgpool), repr(pool), str(pool.dsn), json.dumps(pool.get_stats()), repr(pgpool.get_stats(app=app))]

    try:
        pool.getconn(timeout=0.5)
    except Exception as exc:
        assert not reachable
        texts += [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
    else:
        assert reachable
    if reachable:
        # Connections the server ended are discarded at checkout, with a log line.
        admin = psycopg2.connect(pool.connection_string())
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute(
                "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
                " WHERE application_name = %s AND pid <> pg_backend_pid()",
                (app.config["PGPOOL_CONNECT_ARGS"]["application_name"],),
            )
        admin.close()
        assert client.get("/one").status_code == 200
    pgpool.close(app)
    texts.append(repr(pool))
    return texts


@pytest.mark.parametrize(
    "reachable", [True, pytest.param(False, marks=pytest.mark.slow)], ids=["reachable", "unreachable"]
)
@pytest.mark.parametrize("form", ["keyvalue", "url", "url_query", "connect_args"])
def test_password_never_shown(
    pg_dsn: str,
    app_name: str,
    form: str,
    reachable: bool,
    capture: Callable[[], list[str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    dsn, connect_args = dsn_forms(pg_dsn, reachable)[form]
    if reachable:
        require_trust_auth(dsn, connect_args)
    app = secret_app(dsn, connect_args, app_name, LEAK_LOGGED=lambda: "checked out for" in caplog.text)
    texts = everything_shown(app, reachable)
    texts += capture()
    assert_no_password(texts)
    # The capture did see what it searches: the pool's own log lines are in it.
    logged = "\n".join(texts)
    assert "flask_pgpool" in logged
    if reachable:
        assert "checked out for" in logged  # the leak warning, with its stack
    else:
        assert "cannot connect" in logged and "answering 503" in logged


@pytest.mark.parametrize(
    "config",
    [
        {"PGPOOL_DSN": f"host=localhost password={PASSWORD} port"},
        {"PGPOOL_DSN": f"host=localhost password='{PASSWORD}"},
        {"PGPOOL_DSN": f"postgresql://app:{ENCODED}@localhost:5432/app?sslmode=require&=x"},
        {"PGPOOL_DSN": "dbname=app", "PGPOOL_CONNECT_ARGS": [("password", PASSWORD)]},
        {"PGPOOL_DSN": "dbname=app", "PGPOOL_BINDS": {"reports": f"dbname=r password={PASSWORD} user"}},
        {"PGPOOL_DSN": "dbname=app", "PGPOOL_BINDS": {"reports": {"dsn": f"password={PASSWORD}", "maxconn": 0}}},
    ],
    ids=["keyvalue", "unterminated_quote", "url", "connect_args", "bind", "bind_option"],
)
def test_config_errors_do_not_quote_the_password(config: dict[str, Any], capture: Callable[[], list[str]]) -> None:
    app = Flask("secrets_app")
    app.config.update(config)
    with pytest.raises(ConfigError) as info:
        PgPool(app)
    message = str(info.value)
    assert "PGPOOL_" in message
    assert_no_password([message, repr(info.value), "".join(traceback.format_exception(info.value)), *capture()])


def test_redact_masks_every_form(pg_dsn: str, app_name: str) -> None:
    """What an app shows through ``pool.redact()`` loses the password, in any form it was given."""
    for dsn, connect_args in dsn_forms(pg_dsn, reachable=False).values():
        app = secret_app(dsn, connect_args, app_name)
        pool = app.extensions["pgpool"].get_pool(app=app)
        text = f"{dsn} {PASSWORD} {ENCODED} {quote(PASSWORD)}"
        redacted = pool.redact(text)
        assert_no_password([redacted])
        assert re.search(r"\*\*\*", redacted)
        app.extensions["pgpool"].close(app)
