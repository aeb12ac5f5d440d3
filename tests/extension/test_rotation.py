"""Rotating credentials through the extension: callables in PGPOOL_DSN, PGPOOL_CONNECT_ARGS
and PGPOOL_BINDS, PgPool.drain(), and what ``flask pgpool-status`` shows of them.

The test server trusts every login: the passwords are only carried along.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from psycopg2.extensions import make_dsn
from support.poolkit import backend_pid, wait_until

from flask_pgpool import ConfigError, PgPool, get_db


class Rotating:
    """A secrets store whose password changes at every read."""

    def __init__(self, dsn: str) -> None:
        self.base = dsn
        self.counter = itertools.count(1)
        self.given: list[str] = []

    def password(self) -> str:
        self.given.append(f"r0tat3d-{next(self.counter)}")
        return self.given[-1]

    def dsn(self) -> str:
        return str(make_dsn(self.base, password=self.password()))

    def connect_args(self) -> dict[str, Any]:
        return {"password": self.password()}


def used_passwords(app: Flask, count: int, bind: str | None = None) -> list[str]:
    """Open ``count`` connections at once (in as many app contexts) and read what each logged in with."""
    contexts = [app.app_context() for _ in range(count)]
    passwords = []
    for ctx in contexts:
        ctx.push()
        passwords.append(get_db(bind).info.password)
    for ctx in reversed(contexts):
        ctx.pop()
    return passwords


@pytest.mark.parametrize("key", ["PGPOOL_DSN", "PGPOOL_CONNECT_ARGS"])
def test_callable_in_config_is_asked_for_every_connection(
    make_app: Callable[..., Flask], pg_dsn: str, key: str
) -> None:
    store = Rotating(pg_dsn)
    if key == "PGPOOL_DSN":
        app = make_app(PGPOOL_DSN=store.dsn)
    else:

        def asked_each_time(app: Flask) -> None:
            # The fixture's arguments (application_name...) returned by the function, with the password.
            fixed = dict(app.config["PGPOOL_CONNECT_ARGS"])
            app.config["PGPOOL_CONNECT_ARGS"] = lambda: {**fixed, **store.connect_args()}

        app = make_app(before_init=asked_each_time)
    assert used_passwords(app, 2) == ["r0tat3d-1", "r0tat3d-2"]
    # Reused, not reopened.
    assert used_passwords(app, 1) in (["r0tat3d-1"], ["r0tat3d-2"])
    ext: PgPool = app.extensions["pgpool"]
    pool = ext.get_pool(app=app)
    assert "r0tat3d" not in repr(ext._state(app).settings) + pool.dsn + repr(pool)
    assert pool.redact("r0tat3d-1 r0tat3d-2") == "*** ***"


def test_bind_with_a_callable_dsn(make_app: Callable[..., Flask], pg_dsn: str) -> None:
    store = Rotating(pg_dsn)
    app = make_app(PGPOOL_BINDS={"reports": store.dsn})
    assert used_passwords(app, 1, "reports") == ["r0tat3d-1"]


def test_drain_replaces_every_connection_of_the_app(make_app: Callable[..., Flask], pg_dsn: str) -> None:
    store = Rotating(pg_dsn)
    app = make_app(PGPOOL_DSN=store.dsn, PGPOOL_BINDS={"other": pg_dsn})
    ext: PgPool = app.extensions["pgpool"]
    with app.app_context():
        default_pid, other_pid = backend_pid(get_db()), backend_pid(get_db("other"))
    with app.app_context():
        ext.drain(name="other")
        assert backend_pid(get_db()) == default_pid
        assert backend_pid(get_db("other")) != other_pid
    ext.drain(app)
    pool = ext.get_pool(app=app)
    wait_until(lambda: pool.get_stats()["pool_available"] == 1, timeout=10, what="a new idle connection")
    assert used_passwords(app, 1) == ["r0tat3d-2"]


def test_status_shows_the_last_dsn_masked(make_app: Callable[..., Flask], pg_dsn: str) -> None:
    store = Rotating(pg_dsn)
    app = make_app(PGPOOL_DSN=store.dsn)
    result = app.test_cli_runner().invoke(args=["pgpool-status", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert "password=***" in report["pools"]["default"]["dsn"]
    assert "r0tat3d" not in result.output


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"PGPOOL_DSN": 42}, "PGPOOL_DSN must be a libpq connection string.*a function returning one"),
        ({"PGPOOL_CONNECT_ARGS": 42}, "PGPOOL_CONNECT_ARGS must be a dict.*a function returning one"),
    ],
)
def test_wrong_types_name_the_callable_form(config: dict[str, Any], message: str) -> None:
    app = Flask("bad")
    app.config.update(config)
    app.config.setdefault("PGPOOL_DSN", "dbname=x")
    with pytest.raises(ConfigError, match=message):
        PgPool(app)


def test_a_connect_args_function_is_not_merged_with_a_dict() -> None:
    app = Flask("mixed")
    app.config.update(PGPOOL_DSN="dbname=x", PGPOOL_CONNECT_ARGS=lambda: {"password": "t0ken"})
    with pytest.raises(ConfigError, match=re.escape("PGPOOL_CONNECT_ARGS and the PgPool() option 'connect_args'")):
        PgPool(app, connect_args={"application_name": "shop"})


def test_a_bind_does_not_take_the_main_pools_credentials_function() -> None:
    app = Flask("binds")
    app.config.update(
        PGPOOL_DSN="dbname=x",
        PGPOOL_CONNECT_ARGS=lambda: {"password": "t0ken"},
        PGPOOL_BINDS={"reports": "dbname=y user=reporter"},
    )
    ext = PgPool(app)
    settings = ext._state(app).settings
    assert callable(settings["default"].connect_args)
    assert settings["reports"].connect_args == {}
    assert "t0ken" not in repr(settings)
    ext.close(app)
