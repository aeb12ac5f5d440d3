"""Every PGPOOL_ key: accepted values, refused values, and errors a user can act on.

init_app opens no connection, so these tests need no server: the DSNs point
at a closed port and are never used.
"""

from __future__ import annotations

import traceback
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask

from flask_pgpool import ConfigError, ConnectionPool, PgPool, PgPoolConfigWarning
from flask_pgpool._config import DEFAULT_BIND, KNOWN_KEYS, PoolSettings, read_settings

DSN = "host=127.0.0.1 port=9 dbname=app user=app"
PASSWORD = "Tr0ub4dor-config"


@pytest.fixture(autouse=True)
def no_database_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)


@pytest.fixture
def setup() -> Iterator[Callable[..., tuple[PgPool, Flask]]]:
    """init_app on a new app with the given config; the pools are closed afterwards."""
    made: list[tuple[PgPool, Flask]] = []

    def make(ext: PgPool | None = None, **config: Any) -> tuple[PgPool, Flask]:
        app = Flask(__name__)
        app.config.update(config)
        ext = ext or PgPool()
        ext.init_app(app)
        made.append((ext, app))
        return ext, app

    yield make
    for ext, app in made:
        ext.close(app)


def settings(**config: Any) -> PoolSettings:
    config.setdefault("PGPOOL_DSN", DSN)
    return read_settings(config, {})[DEFAULT_BIND]


# -- accepted values ---------------------------------------------------------------

# (key, value as an environment variable would give it, setting, parsed value)
FROM_STRINGS = [
    ("PGPOOL_MINCONN", "2", "minconn", 2),
    ("PGPOOL_MAXCONN", " 5 ", "maxconn", 5),
    ("PGPOOL_TIMEOUT", "2.5", "timeout", 2.5),
    ("PGPOOL_MAX_WAITING", "30", "max_waiting", 30),
    ("PGPOOL_MAX_IDLE", "60", "max_idle", 60.0),
    ("PGPOOL_MAX_LIFETIME", "1800", "max_lifetime", 1800.0),
    ("PGPOOL_HEALTH_CHECK", "off", "health_check", False),
    ("PGPOOL_PING_AFTER", "0", "ping_after", 0.0),
    ("PGPOOL_PING_AFTER", "10", "ping_after", 10.0),
    ("PGPOOL_LEAK_TIMEOUT", "30", "leak_timeout", 30.0),
    ("PGPOOL_CONNECT_TIMEOUT", "3", "connect_timeout", 3),
    ("PGPOOL_NETWORK_TIMEOUT", "12.5", "network_timeout", 12.5),
    ("PGPOOL_NETWORK_TIMEOUT", "0", "network_timeout", None),
    ("PGPOOL_NETWORK_TIMEOUT", "0.0", "network_timeout", None),
    ("PGPOOL_NETWORK_TIMEOUT", " 0 ", "network_timeout", None),
    ("PGPOOL_STATEMENT_TIMEOUT", "0.5", "statement_timeout", 0.5),
    ("PGPOOL_STATEMENT_TIMEOUT", "0", "statement_timeout", None),
    ("PGPOOL_STATEMENT_TIMEOUT", "0.0", "statement_timeout", None),
    ("PGPOOL_READ_ONLY", "yes", "read_only", True),
    ("PGPOOL_READ_ONLY", "False", "read_only", False),
    ("PGPOOL_RETRY_AFTER", "0", "retry_after", 0),
    ("PGPOOL_EMBEDDED", "true", "embedded", True),
    ("PGPOOL_PING_AFTER", "None", "ping_after", None),
    ("PGPOOL_LEAK_TIMEOUT", " none ", "leak_timeout", None),
    ("PGPOOL_NETWORK_TIMEOUT", "None", "network_timeout", None),
    ("PGPOOL_STATEMENT_TIMEOUT", "NONE", "statement_timeout", None),
]


@pytest.mark.parametrize(("key", "value", "name", "expected"), FROM_STRINGS)
def test_strings_from_the_environment_are_accepted(key: str, value: str, name: str, expected: Any) -> None:
    assert getattr(settings(**{key: value}), name) == expected


@pytest.mark.parametrize(
    ("key", "value", "name", "expected"),
    [
        # What Flask's app.config.from_prefixed_env() makes of FLASK_PGPOOL_*=...
        ("PGPOOL_READ_ONLY", 1, "read_only", True),
        ("PGPOOL_HEALTH_CHECK", 0, "health_check", False),
        ("PGPOOL_TIMEOUT", 3, "timeout", 3.0),
        ("PGPOOL_PING_AFTER", None, "ping_after", None),
        ("PGPOOL_LEAK_TIMEOUT", None, "leak_timeout", None),
        ("PGPOOL_NETWORK_TIMEOUT", None, "network_timeout", None),
        ("PGPOOL_NETWORK_TIMEOUT", 0, "network_timeout", None),
        ("PGPOOL_NETWORK_TIMEOUT", 0.0, "network_timeout", None),
        ("PGPOOL_NETWORK_TIMEOUT", 5, "network_timeout", 5.0),
        ("PGPOOL_STATEMENT_TIMEOUT", None, "statement_timeout", None),
        ("PGPOOL_STATEMENT_TIMEOUT", 0.25, "statement_timeout", 0.25),
        ("PGPOOL_CONNECT_ARGS", {"application_name": "shop"}, "connect_args", {"application_name": "shop"}),
        ("PGPOOL_CONNECT_ARGS", None, "connect_args", {}),
        ("PGPOOL_CONFIGURE", print, "configure", print),
    ],
)
def test_python_values_are_accepted(key: str, value: Any, name: str, expected: Any) -> None:
    assert getattr(settings(**{key: value}), name) == expected


def test_defaults() -> None:
    s = settings()
    assert (s.minconn, s.maxconn, s.timeout, s.max_waiting) == (1, 10, 10.0, 0)
    assert (s.max_idle, s.max_lifetime, s.health_check, s.ping_after) == (600.0, 3600.0, True, 30.0)
    assert (s.leak_timeout, s.connect_timeout, s.connect_args) == (None, 5, {})
    assert (s.network_timeout, s.statement_timeout) == (30.0, None)
    assert (s.read_only, s.configure, s.retry_after, s.embedded) == (False, None, 1, False)


def test_settings_reach_the_pool(setup: Callable[..., tuple[PgPool, Flask]]) -> None:
    ext, app = setup(
        PGPOOL_DSN=DSN,
        PGPOOL_MINCONN="2",
        PGPOOL_MAXCONN="4",
        PGPOOL_TIMEOUT="1.5",
        PGPOOL_MAX_WAITING=8,
        PGPOOL_MAX_IDLE=90,
        PGPOOL_MAX_LIFETIME=900,
        PGPOOL_HEALTH_CHECK=False,
        PGPOOL_PING_AFTER=5,
        PGPOOL_LEAK_TIMEOUT=20,
        PGPOOL_READ_ONLY=True,
        PGPOOL_NETWORK_TIMEOUT=7,
        PGPOOL_STATEMENT_TIMEOUT="2.5",
    )
    pool = ext.get_pool(app=app)
    assert isinstance(pool, ConnectionPool)
    assert (pool.minconn, pool.maxconn, pool.timeout, pool.max_waiting) == (2, 4, 1.5, 8)
    assert (pool.max_idle, pool.max_lifetime, pool.health_check) == (90.0, 900.0, False)
    assert (pool.ping_after, pool.leak_timeout, pool.read_only) == (5.0, 20.0, True)
    assert (pool.network_timeout, pool.statement_timeout) == (7.0, 2.5)
    assert pool.connection_string() == DSN


def test_pgpool_options_are_defaults_that_config_overrides(setup: Callable[..., tuple[PgPool, Flask]]) -> None:
    ext = PgPool(maxconn=3, timeout=2)
    _, first = setup(ext, PGPOOL_DSN=DSN)
    _, second = setup(ext, PGPOOL_DSN=DSN, PGPOOL_MAXCONN=6)
    assert (ext.get_pool(app=first).maxconn, ext.get_pool(app=first).timeout) == (3, 2.0)
    assert (ext.get_pool(app=second).maxconn, ext.get_pool(app=second).timeout) == (6, 2.0)


# -- refused values -----------------------------------------------------------------

# (key, bad value, what the error must say the key expects)
REFUSED = [
    ("PGPOOL_MINCONN", -1, "whole number >= 0"),
    ("PGPOOL_MINCONN", "two", "whole number >= 0"),
    ("PGPOOL_MINCONN", 1.5, "whole number >= 0"),
    ("PGPOOL_MAXCONN", 0, "whole number >= 1"),
    ("PGPOOL_MAXCONN", True, "whole number >= 1"),
    ("PGPOOL_MAXCONN", "5.0", "whole number >= 1"),
    ("PGPOOL_TIMEOUT", 0, "number of seconds > 0"),
    ("PGPOOL_TIMEOUT", -2, "number of seconds > 0"),
    ("PGPOOL_TIMEOUT", "soon", "number of seconds > 0"),
    ("PGPOOL_TIMEOUT", float("inf"), "number of seconds > 0"),
    ("PGPOOL_TIMEOUT", "nan", "number of seconds > 0"),
    ("PGPOOL_MAX_WAITING", -1, "whole number >= 0"),
    ("PGPOOL_MAX_IDLE", 0, "number of seconds > 0"),
    ("PGPOOL_MAX_LIFETIME", "never", "number of seconds > 0"),
    ("PGPOOL_HEALTH_CHECK", "maybe", "True or False"),
    ("PGPOOL_HEALTH_CHECK", 2, "True or False"),
    ("PGPOOL_PING_AFTER", -1, "seconds >= 0"),
    ("PGPOOL_PING_AFTER", "often", "seconds >= 0"),
    ("PGPOOL_LEAK_TIMEOUT", 0, "or None to turn it off"),
    ("PGPOOL_CONNECT_TIMEOUT", -1, "whole number >= 0"),
    ("PGPOOL_CONNECT_TIMEOUT", 2.5, "whole number >= 0"),
    ("PGPOOL_NETWORK_TIMEOUT", -1, "number of seconds > 0 (at most 2147483), or 0 or None to turn it off"),
    ("PGPOOL_NETWORK_TIMEOUT", "30s", "or 0 or None to turn it off"),
    ("PGPOOL_NETWORK_TIMEOUT", "nan", "or 0 or None to turn it off"),
    ("PGPOOL_NETWORK_TIMEOUT", "-0.5", "or 0 or None to turn it off"),
    ("PGPOOL_STATEMENT_TIMEOUT", 10**7, "at most 2147483"),
    ("PGPOOL_STATEMENT_TIMEOUT", False, "or 0 or None to turn it off"),
    ("PGPOOL_CONNECT_ARGS", "application_name=x", "dict of psycopg2.connect() keyword arguments"),
    ("PGPOOL_CONNECT_ARGS", {1: "x"}, "dict of psycopg2.connect() keyword arguments"),
    ("PGPOOL_READ_ONLY", "sometimes", "True or False"),
    ("PGPOOL_CONFIGURE", "myapp.db.configure", "function taking the new connection"),
    ("PGPOOL_RESET", 42, "SQL to run on each returned connection"),
    ("PGPOOL_RETRY_AFTER", -1, "whole number >= 0"),
    ("PGPOOL_RETRY_AFTER", 1.5, "whole number >= 0"),
    ("PGPOOL_EMBEDDED", "perhaps", "True or False"),
    ("PGPOOL_DSN", 42, "libpq connection string or a postgresql:// URL"),
    ("PGPOOL_BINDS", ["reports"], "dict of name -> DSN"),
]


def test_every_key_has_a_refused_value() -> None:
    assert {key for key, _, _ in REFUSED} == KNOWN_KEYS


@pytest.mark.parametrize(("key", "value", "expected"), REFUSED)
def test_refused_value_names_the_key_and_what_it_expects(
    setup: Callable[..., tuple[PgPool, Flask]], key: str, value: Any, expected: str
) -> None:
    config = {"PGPOOL_DSN": DSN, key: value}
    with pytest.raises(ConfigError) as info:
        setup(**config)
    message = str(info.value)
    assert message.startswith(key)
    assert expected in message


def test_minconn_greater_than_maxconn_is_refused(setup: Callable[..., tuple[PgPool, Flask]]) -> None:
    with pytest.raises(ConfigError, match=r"PGPOOL_MINCONN \(5\) must not be greater than PGPOOL_MAXCONN \(2\)"):
        setup(PGPOOL_DSN=DSN, PGPOOL_MINCONN=5, PGPOOL_MAXCONN=2)


def test_refused_option_names_the_option(setup: Callable[..., tuple[PgPool, Flask]]) -> None:
    with pytest.raises(ConfigError, match=r"PgPool\(\) option 'maxconn' must be a whole number >= 1"):
        setup(PgPool(maxconn=0), PGPOOL_DSN=DSN)


def test_unknown_option_is_a_type_error_with_a_suggestion() -> None:
    with pytest.raises(TypeError, match=r"unknown option 'max_conn'; did you mean 'maxconn'\?"):
        PgPool(max_conn=5)
    with pytest.raises(TypeError, match=r"unknown option 'colour'$"):
        PgPool(colour="blue")


def test_failed_init_app_leaves_the_app_untouched() -> None:
    app = Flask(__name__)
    app.config["PGPOOL_DSN"] = DSN
    app.config["PGPOOL_MAXCONN"] = 0
    with pytest.raises(ConfigError):
        PgPool(app)
    assert "pgpool" not in app.extensions
    app.config["PGPOOL_MAXCONN"] = 2
    ext = PgPool(app)  # fixed config: a second try works
    ext.close(app)


# -- the DSN --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dsn",
    [
        f"host=db.internal password={PASSWORD} dbname",
        f"host=db.internal password='{PASSWORD} dbname=app",
        f"postgresql://app:{PASSWORD}@db.internal/app?colour=blue",
    ],
)
def test_invalid_dsn_error_never_quotes_it(setup: Callable[..., tuple[PgPool, Flask]], dsn: str) -> None:
    with pytest.raises(ConfigError) as info:
        setup(PGPOOL_DSN=dsn)
    assert str(info.value).startswith("PGPOOL_DSN is not a valid libpq connection string")
    shown = "".join(traceback.format_exception(info.value))
    assert PASSWORD not in shown
    assert "db.internal" not in shown


def test_dsn_of_a_wrong_type_is_not_quoted(setup: Callable[..., tuple[PgPool, Flask]]) -> None:
    with pytest.raises(ConfigError, match=r"got a bytes$") as info:
        setup(PGPOOL_DSN=f"password={PASSWORD}".encode())
    assert PASSWORD not in str(info.value)


def test_url_dsn_is_accepted_and_shown_masked(setup: Callable[..., tuple[PgPool, Flask]]) -> None:
    ext, app = setup(PGPOOL_DSN=f"postgresql://app:{PASSWORD}@127.0.0.1:9/app")
    assert ext.get_pool(app=app).dsn == "postgresql://app:***@127.0.0.1:9/app"


def test_database_url_is_the_fallback(
    setup: Callable[..., tuple[PgPool, Flask]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", f"postgresql://app:{PASSWORD}@127.0.0.1:9/from_env")
    ext, app = setup()
    assert ext.get_pool(app=app).dsn == "postgresql://app:***@127.0.0.1:9/from_env"
    # PGPOOL_DSN, when set, wins.
    ext, app = setup(PGPOOL_DSN=DSN)
    assert ext.get_pool(app=app).connection_string() == DSN


def test_invalid_database_url_is_named_and_not_quoted(
    setup: Callable[..., tuple[PgPool, Flask]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", f"host=db password='{PASSWORD}")
    with pytest.raises(ConfigError, match="DATABASE_URL environment variable is not a valid") as info:
        setup()
    assert PASSWORD not in str(info.value)


@pytest.mark.parametrize("config", [{}, {"PGPOOL_DSN": None}, {"PGPOOL_DSN": "  "}])
def test_missing_dsn_says_how_to_set_one(setup: Callable[..., tuple[PgPool, Flask]], config: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=r"PGPOOL_DSN is not set, nor the DATABASE_URL.*PGPOOL_EMBEDDED"):
        setup(**config)


def test_embedded_needs_no_dsn_and_starts_nothing_at_init(setup: Callable[..., tuple[PgPool, Flask]]) -> None:
    ext, app = setup(PGPOOL_EMBEDDED=True)
    pool = ext.get_pool(app=app)
    assert pool.dsn == "<not resolved yet>"
    assert pool.get_stats()["connections_num"] == 0


# -- typos ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("typo", "meant"),
    [
        ("PGPOOL_MAXCON", "PGPOOL_MAXCONN"),
        ("PGPOOL_TIMEOUTS", "PGPOOL_TIMEOUT"),
        ("PGPOOL_READONLY", "PGPOOL_READ_ONLY"),
    ],
)
def test_unknown_key_warns_with_the_closest_key(
    setup: Callable[..., tuple[PgPool, Flask]], typo: str, meant: str
) -> None:
    with pytest.warns(PgPoolConfigWarning, match=rf"unknown config key {typo}; did you mean {meant}\?") as record:
        setup(PGPOOL_DSN=DSN, **{typo: 5})
    # The warning points at the caller's init_app() line, not into flask_pgpool.
    assert record[0].filename == __file__


def test_typo_warning_points_at_pgpool_app_too() -> None:
    app = Flask(__name__)
    app.config.update(PGPOOL_DSN=DSN, PGPOOL_MINCONNS=2)
    with pytest.warns(PgPoolConfigWarning, match="did you mean PGPOOL_MINCONN") as record:
        ext = PgPool(app)
    ext.close(app)
    assert record[0].filename == __file__


def test_unrelated_keys_do_not_warn(setup: Callable[..., tuple[PgPool, Flask]]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        setup(PGPOOL_DSN=DSN, SECRET_KEY="x", SQLALCHEMY_DATABASE_URI="sqlite://", PGPOOLS="x")


@pytest.mark.parametrize(
    ("near_miss", "meant"),
    [
        ("pgpool_maxconn", "PGPOOL_MAXCONN"),
        ("Pgpool_Timeout", "PGPOOL_TIMEOUT"),
        ("PG_POOL_MAXCONN", "PGPOOL_MAXCONN"),
        ("PGPOOLMAXCONN", "PGPOOL_MAXCONN"),
        ("PGPOOL_MAXCON", "PGPOOL_MAXCONN"),
        ("pgpool_maxcon", "PGPOOL_MAXCONN"),
        ("PGPOL_MAXCONN", "PGPOOL_MAXCONN"),
        ("PG_POOL_DSN", "PGPOOL_DSN"),
        ("pgpool-connect-args", "PGPOOL_CONNECT_ARGS"),
        ("PG_POOL_CONECT_TIMOUT", "PGPOOL_CONNECT_TIMEOUT"),
        ("pgpool_binds", "PGPOOL_BINDS"),
        ("PGPOOL_maxconn", "PGPOOL_MAXCONN"),
        ("PGPOOL_Connect_Timeout", "PGPOOL_CONNECT_TIMEOUT"),
    ],
)
def test_key_in_the_wrong_case_or_with_a_near_miss_prefix_warns(
    setup: Callable[..., tuple[PgPool, Flask]], near_miss: str, meant: str
) -> None:
    with pytest.warns(PgPoolConfigWarning, match=rf"unknown config key {near_miss}; did you mean {meant}\?") as record:
        setup(PGPOOL_DSN=DSN, **{near_miss: 5})
    assert len(record) == 1
    assert record[0].filename == __file__


@pytest.mark.parametrize(
    "key",
    [
        # libpq's environment variables, as some apps mirror them into their config
        "PGHOST",
        "PGPORT",
        "PGUSER",
        "PGPASSWORD",
        "PGDATABASE",
        "PGSSLMODE",
        "PGAPPNAME",
        "PGCONNECT_TIMEOUT",
        # other extensions' and the app's own keys that start with PG
        "PG_MAXCONN",
        "PG_POOL_SIZE",
        "PG_DSN",
        "PGBOUNCER_MAXCONN",
        "PGPOOL",
        "PGPOOLING",
        "pgpool",
        "PGVECTOR_DIMENSIONS",
    ],
)
def test_keys_that_merely_start_with_pg_do_not_warn(setup: Callable[..., tuple[PgPool, Flask]], key: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        setup(PGPOOL_DSN=DSN, **{key: "x"})


# -- binds ----------------------------------------------------------------------------------


def test_binds_from_a_dsn_or_a_dict(setup: Callable[..., tuple[PgPool, Flask]]) -> None:
    ext, app = setup(
        PGPOOL_DSN=DSN,
        PGPOOL_TIMEOUT=3,
        PGPOOL_MAXCONN=20,
        PGPOOL_BINDS={"reports": "host=127.0.0.1 port=9 dbname=reports", "audit": {"dsn": DSN, "maxconn": "2"}},
    )
    pools = ext.get_pools(app=app)
    assert list(pools) == ["default", "reports", "audit"]
    # A bind inherits the default pool's tuning, not its size.
    assert (pools["reports"].maxconn, pools["reports"].timeout) == (10, 3.0)
    assert pools["audit"].maxconn == 2


@pytest.mark.parametrize(
    ("binds", "message"),
    [
        ({"default": DSN}, "PGPOOL_BINDS keys must be non-empty names other than 'default'"),
        ({"": DSN}, "PGPOOL_BINDS keys must be non-empty names"),
        ({"r": 42}, r"PGPOOL_BINDS\['r'\] must be a DSN string or a dict"),
        ({"r": {"maxconn": 2}}, r"PGPOOL_BINDS\['r'\] needs a 'dsn'"),
        ({"r": {"dsn": DSN, "max_conn": 2}}, r"unknown option 'max_conn'; did you mean 'maxconn'\?"),
        ({"r": {"dsn": DSN, "retry_after": 2}}, r"PGPOOL_BINDS\['r'\] has an unknown option 'retry_after'"),
        ({"r": {"dsn": DSN, "maxconn": 0}}, r"PGPOOL_BINDS\['r'\]\['maxconn'\] must be a whole number >= 1"),
        ({"r": {"dsn": DSN, "minconn": 3, "maxconn": 2}}, r"minconn \(3\) must not be greater than maxconn \(2\)"),
        ({"r": f"password='{PASSWORD}"}, r"PGPOOL_BINDS\['r'\]\['dsn'\] is not a valid"),
    ],
)
def test_invalid_binds_are_refused(
    setup: Callable[..., tuple[PgPool, Flask]], binds: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        setup(PGPOOL_DSN=DSN, PGPOOL_BINDS=binds)
    assert PASSWORD not in str(info.value)
