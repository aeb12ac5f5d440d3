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
from psycopg2.extensions import make_dsn, parse_dsn

from flask_pgpool import ConfigError, PgPool, get_db
from flask_pgpool import _dsn as dsnlib

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


# -- passwords that libpq and a URL parser would cut differently --------------------------


def url_of(pg_dsn: str, userinfo: str, query: str = "") -> str:
    """A URL of the test server with ``userinfo`` written as given (host and port in the query)."""
    params = parse_dsn(pg_dsn)
    host, port = quote(params.get("host", "localhost"), safe=""), params.get("port", "5432")
    return f"postgresql://{userinfo}@/{params.get('dbname', 'postgres')}?host={host}&port={port}{query}"


AMBIGUOUS = {
    "raw_at": "postgresql://app:Hunter@2x-pw@db.internal:5432/app",
    "raw_at_multihost": "postgresql://app:Hunter@2x-pw@db1.internal:5432,db2.internal:5433/app",
    "raw_slash": "postgresql://app:Hunter/2x-pw@db.internal/app",
    "raw_slash_and_at": "postgresql://app:Hunter/2x@pw@db.internal/app?sslmode=require",
}
AMBIGUOUS_PARTS = ["Hunter", "2x-pw", "2x@pw", "2x"]


@pytest.mark.parametrize("where", ["PGPOOL_DSN", "bind", "DATABASE_URL"])
@pytest.mark.parametrize("form", list(AMBIGUOUS))
def test_url_with_a_raw_at_or_slash_in_the_password_is_refused(
    form: str, where: str, monkeypatch: pytest.MonkeyPatch, capture: Callable[[], list[str]]
) -> None:
    url = AMBIGUOUS[form]
    app = Flask("secrets_app")
    if where == "PGPOOL_DSN":
        app.config["PGPOOL_DSN"] = url
        key = "PGPOOL_DSN"
    elif where == "bind":
        app.config.update(PGPOOL_DSN="dbname=app", PGPOOL_BINDS={"reports": {"dsn": url}})
        key = "PGPOOL_BINDS['reports']['dsn']"
    else:
        monkeypatch.setenv("DATABASE_URL", url)
        key = "the DATABASE_URL environment variable"
    with pytest.raises(ConfigError) as info:
        PgPool(app)
    message = str(info.value)
    assert message.startswith(f"{key} is a URL whose user name or password holds a raw '@' or '/'")
    assert "percent-encode" in message and "%40" in message
    shown = [message, "".join(traceback.format_exception(info.value)), *capture()]
    for text in shown:
        for part in AMBIGUOUS_PARTS:
            assert part not in text


@pytest.mark.parametrize("form", list(AMBIGUOUS))
def test_the_pool_never_shows_part_of_an_ambiguous_url(form: str) -> None:
    """The engine used without the extension takes any DSN: it shows none of such a password."""
    from flask_pgpool import ConnectionPool

    pool = ConnectionPool(0, 1, AMBIGUOUS[form], timeout=0.5, connect_timeout=1)
    try:
        shown = [repr(pool), pool.dsn]
        try:
            pool.getconn()
        except Exception as exc:
            shown += [str(exc), "".join(traceback.format_exception(exc))]
        shown.append(pool.redact(f"could not translate host name {parse_dsn(AMBIGUOUS[form]).get('host')!r}"))
    finally:
        pool.closeall()
    for text in shown:
        for part in AMBIGUOUS_PARTS:
            assert part not in text, text


def test_url_password_with_raw_question_mark_hash_and_colon_is_masked_whole(
    pg_dsn: str, app_name: str, capture: Callable[[], list[str]]
) -> None:
    """libpq reads ``?``, ``#`` and ``:`` after the first ``:`` as part of the password; so must the masking."""
    user = parse_dsn(pg_dsn).get("user", "postgres")
    password = "Qx7?frag#ment:Zz"
    dsn = url_of(pg_dsn, f"{user}:{password}")
    require_trust_auth(dsn, {})
    assert parse_dsn(dsn)["password"] == password
    app = secret_app(dsn, {}, app_name)
    pool = app.extensions["pgpool"].get_pool(app=app)
    assert pool.dsn.startswith(f"postgresql://{user}:***@/")
    texts = everything_shown(app, reachable=True) + capture()
    for text in texts:
        for part in ("Qx7", "frag", "ment:Zz", "Zz"):
            assert part not in text, text[:2000]


@pytest.mark.parametrize(
    "query",
    ["&password=Qp-secret-1", "&pass%77ord=Qp-secret-1", "&sslpassword=Qp-secret-1&password=Qp-secret-1"],
    ids=["password", "encoded_key", "sslpassword"],
)
def test_password_in_the_url_query_is_masked(pg_dsn: str, app_name: str, query: str) -> None:
    user = parse_dsn(pg_dsn).get("user", "postgres")
    dsn = url_of(pg_dsn, user, query)
    app = secret_app(dsn, {}, app_name)
    pool = app.extensions["pgpool"].get_pool(app=app)
    result = app.test_cli_runner().invoke(args=["pgpool-status", "--json", "--timeout", "1"])
    for text in (repr(pool), pool.dsn, pool.redact(dsn), result.output):
        assert "Qp-secret" not in text, text
    assert "=***" in pool.dsn
    app.extensions["pgpool"].close(app)


QUOTED_PASSWORD = "it's a \\ Zq9-secret"


@pytest.mark.parametrize(
    "written",
    [
        r"password='it\'s a \\ Zq9-secret'",
        r"password=it\'s\ a\ \\\ Zq9-secret",
        r"password = 'it\'s a \\ Zq9-secret'",
    ],
    ids=["quoted", "escaped", "spaced"],
)
def test_keyvalue_password_with_quotes_and_backslashes_is_masked_whole(
    pg_dsn: str, app_name: str, written: str
) -> None:
    params = {k: v for k, v in parse_dsn(pg_dsn).items() if k != "password"}
    dsn = f"{make_dsn(**params)} {written}"
    assert parse_dsn(dsn)["password"] == QUOTED_PASSWORD
    app = secret_app(dsn, {}, app_name)
    pool = app.extensions["pgpool"].get_pool(app=app)
    result = app.test_cli_runner().invoke(args=["pgpool-status", "--timeout", "1"])
    # The text of the DSN itself, as an app might log it through redact().
    for text in (repr(pool), pool.dsn, pool.redact(f"connecting with {dsn} failed"), result.output):
        for part in ("Zq9", "secret", "it\\'s", "it's"):
            assert part not in text, text
    app.extensions["pgpool"].close(app)


def test_redact_keeps_what_follows_a_password_in_a_url_query() -> None:
    """A password we were not told about is masked, and the rest of the text stays readable."""
    text = "connecting to postgresql://app@db1,db2/app?password=hunter2&target_session_attrs=read-write failed"
    shown = dsnlib.redact(text, [])
    assert "hunter2" not in shown
    assert shown.endswith("?password=***&target_session_attrs=read-write failed")
