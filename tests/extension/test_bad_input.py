"""Bad input gets a clear error at the first moment it can be seen.

* Every ``PGPOOL_`` key with a wrong type or range is refused by ``init_app``
  with a :class:`ConfigError` that names the key and says what it expects.
* An unknown ``PGPOOL_`` key (a typo) warns, naming the closest known key.
* Misuse at run time (``get_db()`` outside a context, returning a connection
  the pool does not own, using a closed pool) raises an error that says what
  went wrong, or answers 503 inside a request.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import psycopg2
import pytest
from flask import Flask
from psycopg2.pool import PoolError
from support.faults import assert_no_leak

from flask_pgpool import (
    ConfigError,
    ConnectionPool,
    PgPool,
    PgPoolConfigWarning,
    PoolClosed,
    get_db,
)
from flask_pgpool._config import KNOWN_KEYS

DSN = "host=127.0.0.1 port=1 dbname=app user=app"  # never connected to: init_app opens nothing

# key: (what the message must say the key expects, [wrong values])
WRONG: dict[str, tuple[str, list[Any]]] = {
    "PGPOOL_DSN": (
        "connection string",
        [42, b"dbname=app", ["dbname=app"], "host=localhost port", "dbname='unterminated"],
    ),
    "PGPOOL_MINCONN": ("whole number >= 0", [-1, "some", 1.5, True, None]),
    "PGPOOL_MAXCONN": ("whole number >= 1", [0, -3, "ten", 2.5, False, None]),
    "PGPOOL_TIMEOUT": ("seconds > 0", [0, -1, "soon", float("inf"), float("nan"), True, None]),
    "PGPOOL_MAX_WAITING": ("whole number >= 0", [-1, "lots", 1.5, True]),
    "PGPOOL_MAX_IDLE": ("seconds > 0", [0, -5, "forever", None, True]),
    "PGPOOL_MAX_LIFETIME": ("seconds > 0", [0, -5, "1h", None, float("inf")]),
    "PGPOOL_HEALTH_CHECK": ("True or False", ["maybe", 2, None, 1.0]),
    "PGPOOL_PING_AFTER": ("seconds >= 0", [-1, "often", True, float("nan")]),
    "PGPOOL_LEAK_TIMEOUT": ("seconds > 0, or None", [0, -1, "later", False]),
    "PGPOOL_CONNECT_TIMEOUT": ("whole number >= 0", [-1, 2.5, "2s", True, None]),
    "PGPOOL_NETWORK_TIMEOUT": ("or 0 or None to turn it off", [-1, "30s", True, float("inf"), 3e6]),
    "PGPOOL_STATEMENT_TIMEOUT": ("or 0 or None to turn it off", [-0.5, "5 s", False, float("nan"), 1e7]),
    "PGPOOL_CONNECT_ARGS": ("dict of psycopg2.connect() keyword arguments", ["sslmode=require", ["a"], {1: "x"}]),
    "PGPOOL_READ_ONLY": ("True or False", ["sometimes", 2, None]),
    "PGPOOL_CONFIGURE": ("function taking the new connection", ["myapp.db.configure", 42, True]),
    "PGPOOL_RESET": ("SQL to run on each returned connection", ["", "   ", 42, True, ["DISCARD ALL"]]),
    "PGPOOL_RETRY_AFTER": ("whole number >= 0", [-1, "later", 1.5, True, None]),
    "PGPOOL_EMBEDDED": ("True or False", ["perhaps", 3, None]),
    "PGPOOL_BINDS": (
        "PGPOOL_BINDS",
        [
            "dbname=reports",
            ["dbname=reports"],
            {"": DSN},
            {"default": DSN},
            {"reports": 42},
            {"reports": {"maxconn": 5}},
            {"reports": {"dsn": 42}},
            {"reports": {"dsn": DSN, "maxconn": 0}},
            {"reports": {"dsn": DSN, "timeout": "soon"}},
            {"reports": {"dsn": DSN, "minconn": 5, "maxconn": 2}},
            {"reports": {"dsn": DSN, "retry_after": 1}},
            {"reports": {"dsn": DSN, "maxcon": 1}},
        ],
    ),
}

CASES = [
    pytest.param(key, expects, value, id=f"{key}={value!r}")
    for key, (expects, values) in WRONG.items()
    for value in values
]


def new_app(**config: Any) -> Flask:
    app = Flask("bad_input")
    app.config.update(PGPOOL_DSN=DSN)
    app.config.update(config)
    return app


def test_the_table_covers_every_key() -> None:
    assert set(WRONG) == set(KNOWN_KEYS)


@pytest.mark.parametrize(("key", "expects", "value"), CASES)
def test_wrong_value_is_refused_at_init_app(key: str, expects: str, value: Any) -> None:
    app = new_app(**{key: value})
    pgpool = PgPool()
    with pytest.raises(ConfigError) as info:
        pgpool.init_app(app)
    message = str(info.value)
    assert key in message
    assert expects in message
    # Refused before anything was registered: fix the config, call init_app again.
    assert "pgpool" not in app.extensions
    app.config[key] = DSN if key == "PGPOOL_DSN" else None
    if key != "PGPOOL_DSN":
        del app.config[key]
    pgpool.init_app(app)
    assert app.extensions["pgpool"] is pgpool
    pgpool.close(app)


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("maxconn", 0, "whole number >= 1"),
        ("timeout", "soon", "number of seconds"),
        ("read_only", "no way", "True or False"),
    ],
)
def test_wrong_keyword_option_is_refused_at_init_app(option: str, value: Any, expected: str) -> None:
    pgpool = PgPool(**{option: value})
    with pytest.raises(ConfigError, match=rf"PgPool\(\) option '{option}' must be (a )?{expected}"):
        pgpool.init_app(new_app())


def test_unknown_keyword_option_names_the_closest() -> None:
    with pytest.raises(TypeError, match="'maxconn'"):
        PgPool(max_conn=5)


def test_minconn_above_maxconn_names_both_keys() -> None:
    with pytest.raises(ConfigError, match=r"PGPOOL_MINCONN.*PGPOOL_MAXCONN"):
        PgPool(new_app(PGPOOL_MINCONN=5, PGPOOL_MAXCONN=2))


def test_missing_dsn_says_how_to_set_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    app = new_app()
    del app.config["PGPOOL_DSN"]
    with pytest.raises(ConfigError, match=r"PGPOOL_DSN is not set.*DATABASE_URL"):
        PgPool(app)


def test_bad_database_url_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "host=localhost port")
    app = new_app()
    del app.config["PGPOOL_DSN"]
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        PgPool(app)


def typos(key: str) -> list[str]:
    name = key.removeprefix("PGPOOL_")
    candidates = {name[:-1], name[:-2] + name[-1] + name[-2], name + "S"}
    return ["PGPOOL_" + typo for typo in sorted(candidates) if "PGPOOL_" + typo not in KNOWN_KEYS]


TYPOS = [pytest.param(typo, key, id=typo) for key in sorted(KNOWN_KEYS) for typo in typos(key)]


@pytest.mark.parametrize(("typo", "key"), TYPOS)
def test_typo_warns_naming_the_closest_key(typo: str, key: str) -> None:
    app = new_app(**{typo: 1})
    with pytest.warns(PgPoolConfigWarning) as record:
        PgPool().init_app(app)
    (warning,) = record
    assert typo in str(warning.message)
    assert f"did you mean {key}?" in str(warning.message)
    # Points at the caller's line, where the config is set up.
    assert warning.filename == __file__


def test_typo_warning_points_at_the_caller_of_pgpool_app() -> None:
    app = new_app(PGPOOL_MAXCON=1)
    with pytest.warns(PgPoolConfigWarning, match="did you mean PGPOOL_MAXCONN") as record:
        PgPool(app)
    assert record[0].filename == __file__


def test_known_and_foreign_keys_do_not_warn() -> None:
    app = new_app(PGPOOL_MAXCONN=3, SQLALCHEMY_DATABASE_URI="sqlite://", PGPOOLING=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PgPoolConfigWarning)
        PgPool().init_app(app)


# -- misuse at run time ---------------------------------------------------------


def test_get_db_outside_a_context() -> None:
    with pytest.raises(RuntimeError, match="application context"):
        get_db()
    pgpool = PgPool(new_app())
    with pytest.raises(RuntimeError, match="application context"):
        pgpool.get_db()


def test_get_db_in_an_app_without_pgpool() -> None:
    with Flask("plain").app_context(), pytest.raises(RuntimeError, match=r"PgPool\(app\)|init_app"):
        get_db()


def test_get_db_of_an_unknown_bind(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    with app.app_context(), pytest.raises(KeyError, match="no database bind 'nope'"):
        get_db("nope")


def test_init_app_twice() -> None:
    app = new_app()
    PgPool(app)
    with pytest.raises(RuntimeError, match="once per app"):
        PgPool(app)


def test_putconn_of_a_foreign_connection(pg_dsn: str) -> None:
    pool = ConnectionPool(0, 2, pg_dsn)
    foreign = psycopg2.connect(pg_dsn)
    try:
        with pytest.raises(PoolError, match="not checked out from this pool"):
            pool.putconn(foreign)
        assert not foreign.closed  # not ours: left alone
        conn = pool.getconn()
        pool.putconn(conn)
        with pytest.raises(PoolError, match="not checked out from this pool"):
            pool.putconn(conn)  # returned twice
        assert_no_leak(pool)
        assert pool.get_stats()["pool_size"] == 1
    finally:
        foreign.close()
        pool.closeall()


def test_putconn_into_another_pool(pg_dsn: str) -> None:
    first, second = ConnectionPool(0, 1, pg_dsn), ConnectionPool(0, 1, pg_dsn)
    try:
        conn = first.getconn()
        with pytest.raises(PoolError, match="not checked out from this pool"):
            second.putconn(conn)
        first.putconn(conn)
        assert_no_leak(first)
    finally:
        first.closeall()
        second.closeall()


def test_getconn_after_closeall(pg_dsn: str) -> None:
    pool = ConnectionPool(0, 2, pg_dsn)
    in_use = pool.getconn()
    pool.closeall()
    pool.closeall()  # idempotent
    with pytest.raises(PoolClosed, match="closed"):
        pool.getconn()
    pool.putconn(in_use)  # a connection out at close time is closed when it comes back
    assert in_use.closed
    assert pool.get_stats()["pool_size"] == 0


def test_get_db_after_close_answers_503(make_app: Callable[..., Flask]) -> None:
    app = make_app(TESTING=False)

    @app.get("/one")
    def one() -> str:
        with get_db().cursor() as cur:
            cur.execute("SELECT 1")
        return "ok"

    client = app.test_client()
    assert client.get("/one").status_code == 200
    app.extensions["pgpool"].close(app)
    response = client.get("/one")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    with app.app_context(), pytest.raises(PoolClosed):
        get_db()


def test_an_app_given_where_the_bind_name_goes_says_how_to_pass_it(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    pgpool = app.extensions["pgpool"]
    with pytest.raises(TypeError, match=r"pass the app as app=\.\.\., e\.g\. get_stats\(app=app\)"):
        pgpool.get_stats(app)
    with pytest.raises(TypeError, match="the first argument is the bind's name"):
        pgpool.get_pool(app)
    assert pgpool.get_stats(app=app)["pool_max"] >= 1
