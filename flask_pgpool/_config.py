"""Every ``PGPOOL_`` configuration key: declared once in :data:`SETTINGS`, parsed and checked here.

Settings come from three places, the later winning: the defaults below, the
keyword options given to ``PgPool(...)``, and the app's ``PGPOOL_*`` config
(``connect_args`` from both are merged key by key). Errors name the key to fix
and what it expects; a value that may contain a password is never quoted.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import sys
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

import psycopg2
from psycopg2.extensions import parse_dsn

from . import _dsn as dsnlib
from . import _validate
from ._service import service_params
from ._timeouts import DEFAULT_NETWORK_TIMEOUT, KEEPALIVE_KEYS

__all__ = [
    "DEFAULT_BIND",
    "KNOWN_KEYS",
    "SETTINGS",
    "ConfigError",
    "PgPoolConfigWarning",
    "PoolSettings",
    "Setting",
    "check_options",
    "option_names",
    "read_settings",
]

PREFIX = "PGPOOL_"
DEFAULT_BIND = "default"


class ConfigError(ValueError):
    """A ``PGPOOL_`` setting has a wrong type or value."""


class PgPoolConfigWarning(UserWarning):
    """A config key looks meant for flask-pgpool but is not one of its keys (a typo?)."""


@dataclass(frozen=True)
class Setting:
    """One configuration key, as the documentation shows it."""

    name: str  #: the option name: ``PgPool(maxconn=...)``, a bind's ``{"maxconn": ...}``
    key: str  #: the app config key, ``PGPOOL_MAXCONN``
    default: object
    kind: str  #: what it takes, in a few words: "whole number >= 1"
    bind: bool  #: whether a bind of ``PGPOOL_BINDS`` may set it
    doc: str  #: one paragraph of reStructuredText


Parser = Callable[[str, Any], Any]

# -- parsers: each takes (label, value) and returns the parsed value or raises ConfigError --


def _checked(check: Callable[[], Any]) -> Any:
    try:
        return check()
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _int(minimum: int) -> Parser:
    def parse(label: str, value: Any) -> int:
        # Environment variables are strings: "5" is 5, "5.0" is refused.
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        return int(_checked(lambda: _validate.whole_number(label, value, minimum=minimum)))

    return parse


def _number(value: Any) -> Any:
    """A number (or "None") from the environment's text; anything else unchanged (and refused by the check)."""
    if isinstance(value, str):
        if value.strip().lower() == "none":  # Flask's from_prefixed_env turns only "null" into None
            return None
        with contextlib.suppress(ValueError):
            return float(value)
    return value


def _seconds(label: str, value: Any) -> float:
    return float(_checked(lambda: _validate.positive_seconds(label, _number(value))))


def _leak_timeout(label: str, value: Any) -> float | None:
    checked = _checked(lambda: _validate.optional_seconds(label, _number(value), none_means="to turn it off"))
    return None if checked is None else float(checked)


def _ping_after(label: str, value: Any) -> float | None:
    checked = _checked(
        lambda: _validate.optional_seconds(
            label, _number(value), none_means="to never ping", zero_means="pings at every checkout"
        )
    )
    return None if checked is None else float(checked)


# Both bounds end up in milliseconds in a C int (tcp_user_timeout, statement_timeout).
_MAX_BOUND = 2_147_483


def _bound(label: str, value: Any) -> float | None:
    """Seconds > 0, or None for off: None, or any spelling of zero (0, 0.0, "0", "0.0" from the environment)."""
    value = _number(value)
    if value is None or (not isinstance(value, bool) and isinstance(value, (int, float)) and value == 0):
        return None
    try:
        seconds = _validate.positive_seconds(label, value)
    except ValueError:
        seconds = None
    if seconds is None or seconds > _MAX_BOUND:
        raise ConfigError(
            f"{label} must be a number of seconds > 0 (at most {_MAX_BOUND}), or 0 or None to turn it off, "
            f"got {value!r}"
        )
    return seconds


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _bool(label: str, value: Any) -> bool:
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    # Flask's from_prefixed_env() turns FLASK_PGPOOL_READ_ONLY=1 into the int 1.
    if type(value) is int and value in (0, 1):
        return bool(value)
    if not isinstance(value, bool):
        raise ConfigError(f"{label} must be True or False, got {value!r}")
    return value


def _dsn(label: str, value: Any) -> str | Callable[[], str] | None:
    # A blank DSN is almost always an unset environment variable, not a wish
    # for libpq's defaults: treat it as not set.
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if callable(value):
        return value  # type: ignore[no-any-return]  # called for every new connection
    if not isinstance(value, str):
        kind = type(value).__name__
        raise ConfigError(
            f"{label} must be a libpq connection string or a postgresql:// URL (or a function "
            f"returning one for each new connection), got a {kind}"
        )
    try:
        dsnlib.check(value)
    except dsnlib.InvalidDSN as exc:
        raise ConfigError(f"{label} {exc}") from None
    return value


def _mapping(label: str, value: Any) -> dict[str, Any] | Callable[[], Mapping[str, Any]]:
    if value is None:
        return {}
    if callable(value):
        return value  # type: ignore[no-any-return]  # called for every new connection
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ConfigError(
            f"{label} must be a dict of psycopg2.connect() keyword arguments (or a function returning "
            f"one for each new connection), got {type(value).__name__}"
        )
    return dict(value)


def _callable(label: str, value: Any) -> Callable[..., None] | None:
    if value is not None and not callable(value):
        raise ConfigError(f"{label} must be a function taking the new connection, or None, got {value!r}")
    return value  # type: ignore[no-any-return]


def _reset(label: str, value: Any) -> str | Callable[..., None] | None:
    if value is None or callable(value):
        return value  # type: ignore[no-any-return]
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise ConfigError(
        f"{label} must be SQL to run on each returned connection (such as 'DISCARD ALL'), "
        f"a function taking the connection, or None, got {value!r}"
    )


def _binds(label: str, value: Any) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{label} must be a dict of name -> DSN or dict of options, got {type(value).__name__}")
    return value


# -- the keys ------------------------------------------------------------------------

_PARSERS: dict[str, Parser] = {}


def _setting(name: str, default: object, kind: str, parse: Parser, *, bind: bool = True, doc: str) -> Setting:
    _PARSERS[name] = parse
    doc = " ".join(doc.split())  # one paragraph, however the source wraps it
    return Setting(name=name, key=PREFIX + name.upper(), default=default, kind=kind, bind=bind, doc=doc)


#: Every configuration key, in the order the documentation lists them.
SETTINGS: tuple[Setting, ...] = (
    _setting(
        "dsn",
        None,
        "connection string, URL, or a function returning one",
        _dsn,
        doc="""
        The database: a libpq connection string (``host=db dbname=app user=app``)
        or a URL (``postgresql://app:secret@db:5432/app``), either naming one host
        or several (``host=a,b target_session_attrs=read-write``). When unset or
        blank, the ``DATABASE_URL`` environment variable is used. In a URL, special
        characters of the user name and password must be percent-encoded (``@`` as
        ``%40``, ``/`` as ``%2F``). The password is never shown: not in errors,
        logs, reprs, the CLI or HTTP responses. Each bind needs a DSN of its own.
        A function returning one is called for every new connection, so that a
        rotated password is used as soon as it is out (see the page "Failover and
        rotating credentials").
        """,
    ),
    _setting(
        "minconn",
        1,
        "whole number >= 0",
        _int(0),
        doc="""
        Connections kept open once the pool has been used; they are opened in the
        background, never at ``init_app``. A bind starts from the default, not
        from the main pool's value.
        """,
    ),
    _setting(
        "maxconn",
        10,
        "whole number >= 1",
        _int(1),
        doc="""
        Most connections open at once, per process; further checkouts wait. A bind
        starts from the default, not from the main pool's value.
        """,
    ),
    _setting(
        "timeout",
        10.0,
        "seconds > 0",
        _seconds,
        doc="""
        Seconds a checkout waits for a free connection (or for the server to
        answer) before it fails with ``PoolTimeout``, which a request answers with
        a 503.
        """,
    ),
    _setting(
        "max_waiting",
        0,
        "whole number >= 0",
        _int(0),
        doc="""
        Most checkouts waiting at once for a connection to be returned; one more
        fails at once with ``TooManyRequests`` (a 503). ``0``: no limit.
        """,
    ),
    _setting(
        "max_idle",
        600.0,
        "seconds > 0",
        _seconds,
        doc="""
        Seconds an idle connection above ``PGPOOL_MINCONN`` is kept before it is
        closed.
        """,
    ),
    _setting(
        "max_lifetime",
        3600.0,
        "seconds > 0",
        _seconds,
        doc="""
        Seconds after which a connection is closed and replaced (up to 10 % sooner,
        at random, so that connections do not all expire together).
        """,
    ),
    _setting(
        "health_check",
        True,
        "True or False",
        _bool,
        doc="""
        Check at checkout that an idle connection is still alive, and replace it if
        not. Looks at the socket, without a round trip, when it can.
        """,
    ),
    _setting(
        "ping_after",
        30.0,
        "seconds >= 0, or None",
        _ping_after,
        doc="""
        Seconds of idleness after which the checkout check also sends ``SELECT 1``.
        ``0``: at every checkout; ``None``: never.
        """,
    ),
    _setting(
        "leak_timeout",
        None,
        "seconds > 0, or None",
        _leak_timeout,
        doc="""
        Seconds a connection may stay checked out before a warning is logged with
        the stack of the code that checked it out. ``None``: off.
        """,
    ),
    _setting(
        "connect_timeout",
        5,
        "whole number >= 0",
        _int(0),
        doc="""
        Seconds a new connection may take to open (libpq's ``connect_timeout``, per
        host), unless the DSN sets one. ``0``: no limit of libpq's (a checkout
        still gives up after ``PGPOOL_TIMEOUT``).
        """,
    ),
    _setting(
        "network_timeout",
        DEFAULT_NETWORK_TIMEOUT,
        "seconds > 0, 0 or None",
        _bound,
        doc="""
        Seconds after which a connection whose network went silent is given up
        (TCP keepalives and ``tcp_user_timeout``): the request gets a 503. Any
        keepalive parameter set in the DSN, ``PGPOOL_CONNECT_ARGS`` or the
        connection service leaves the whole bound to it; a bind's own value wins
        over the keepalive parameters of ``PGPOOL_CONNECT_ARGS``. ``0`` or
        ``None``: off.
        """,
    ),
    _setting(
        "statement_timeout",
        None,
        "seconds > 0, 0 or None",
        _bound,
        doc="""
        Seconds after which the server cancels a statement (``statement_timeout``,
        sent as a startup option, so not through PgBouncer). ``0`` or ``None``:
        off.
        """,
    ),
    _setting(
        "connect_args",
        {},
        "dict of psycopg2.connect() arguments, or a function returning one",
        _mapping,
        doc="""
        More keyword arguments for ``psycopg2.connect()``: libpq parameters
        (``{"application_name": "shop", "sslmode": "require"}``) and psycopg2's
        own (``cursor_factory``, ``connection_factory``). They win over the same
        parameters in the DSN. Merged key by key with the ``connect_args`` option
        of ``PgPool()``, the app's config winning. A bind takes them too, except
        those that say where and as whom to connect (``host``, ``port``,
        ``dbname``, ``user``, ``password``...) and those its own DSN sets.
        A function returning them is called for every new connection (an IAM
        token as the password); it is not merged with a dict, and a bind does
        not take it.
        """,
    ),
    _setting(
        "read_only",
        False,
        "True or False",
        _bool,
        doc="Open every connection as a read-only session.",
    ),
    _setting(
        "configure",
        None,
        "function or None",
        _callable,
        doc="""
        A function called with each new connection, once (register adapters,
        ``SET`` session settings, ``initialize()`` a ``LoggingConnection``). A
        transaction it leaves open is rolled back: commit what must last.
        """,
    ),
    _setting(
        "reset",
        None,
        "SQL, function or None",
        _reset,
        doc="""
        Run on every returned connection so that no session state reaches the
        next request: SQL (``"DISCARD ALL"``) or a function given the
        connection, either run in autocommit. It costs one round trip per request;
        ``PGPOOL_CONFIGURE`` runs again after it. A reset that fails closes the
        connection.
        """,
    ),
    _setting(
        "retry_after",
        1,
        "whole number >= 0",
        _int(0),
        bind=False,
        doc="""
        Seconds in the ``Retry-After`` header of the 503 response. ``0``: no
        header.
        """,
    ),
    _setting(
        "embedded",
        False,
        "True or False",
        _bool,
        bind=False,
        doc="""
        With no DSN, run a private PostgreSQL server (the ``embedded`` extra) whose
        data lives in the app's instance folder, started by the first checkout.
        For development.
        """,
    ),
    _setting(
        "binds",
        {},
        "dict of name -> DSN or dict of options",
        _binds,
        bind=False,
        doc="""
        More databases, each with a pool of its own:
        ``{"reports": "postgresql://..."}`` or
        ``{"reports": {"dsn": "...", "maxconn": 5}}``; ``get_db("reports")`` uses
        one. A bind connects with its own DSN and takes the main pool's tuning and
        ``connect_args``, but not its sizes nor where and as whom it connects.
        """,
    ),
)

_BY_NAME = {s.name: s for s in SETTINGS}
#: Every key flask-pgpool reads from ``app.config``.
KNOWN_KEYS = frozenset(s.key for s in SETTINGS)
# What a bind does not take from the main pool: it has its own, or starts from the default.
_NOT_INHERITED = frozenset({"dsn", "minconn", "maxconn", "connect_args"})


_DEFAULTS: dict[str, Any] = {s.name: s.default for s in SETTINGS}


def _default(name: str) -> Any:
    value = _DEFAULTS[name]
    return dict(value) if isinstance(value, Mapping) else value


@dataclass(frozen=True, repr=False)
class PoolSettings:
    """The validated settings of one pool; the defaults are those of :data:`SETTINGS`."""

    # A function is called for every new connection (rotating passwords, IAM tokens).
    dsn: str | Callable[[], str] | None = _DEFAULTS["dsn"]
    minconn: int = _DEFAULTS["minconn"]
    maxconn: int = _DEFAULTS["maxconn"]
    timeout: float = _DEFAULTS["timeout"]
    max_waiting: int = _DEFAULTS["max_waiting"]
    max_idle: float = _DEFAULTS["max_idle"]
    max_lifetime: float = _DEFAULTS["max_lifetime"]
    health_check: bool = _DEFAULTS["health_check"]
    ping_after: float | None = _DEFAULTS["ping_after"]
    leak_timeout: float | None = _DEFAULTS["leak_timeout"]
    connect_timeout: int = _DEFAULTS["connect_timeout"]
    network_timeout: float | None = _DEFAULTS["network_timeout"]
    statement_timeout: float | None = _DEFAULTS["statement_timeout"]
    connect_args: Mapping[str, Any] | Callable[[], Mapping[str, Any]] = field(
        default_factory=lambda: _default("connect_args")
    )
    read_only: bool = _DEFAULTS["read_only"]
    configure: Callable[..., None] | None = _DEFAULTS["configure"]
    reset: str | Callable[..., None] | None = _DEFAULTS["reset"]
    retry_after: int = _DEFAULTS["retry_after"]
    embedded: bool = _DEFAULTS["embedded"]

    def __repr__(self) -> str:
        # The DSN and the connect arguments may hold a password.
        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        if isinstance(self.dsn, str):
            shown["dsn"] = dsnlib.mask_dsn(self.dsn)
        if isinstance(self.connect_args, Mapping):
            shown["connect_args"] = dsnlib.mask_args(self.connect_args)
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in shown.items())})"


_POOL_SETTINGS = tuple(s for s in SETTINGS if s.name != "binds")
assert [s.name for s in _POOL_SETTINGS] == [f.name for f in fields(PoolSettings)]


def option_names() -> list[str]:
    """The keyword options ``PgPool(...)`` accepts."""
    return [s.name for s in SETTINGS]


def check_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Check the names of ``PgPool(**options)``; values are checked at init_app."""
    for name in options:
        if name not in _BY_NAME:
            hint = difflib.get_close_matches(name, option_names(), n=1)
            did_you_mean = f"; did you mean {hint[0]!r}?" if hint else ""
            raise TypeError(f"PgPool() got an unknown option {name!r}{did_you_mean}")
    return dict(options)


def read_settings(config: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, PoolSettings]:
    """Validate the app's settings; return them per bind, the default bind first."""
    _warn_unknown_keys(config)
    values: dict[str, Any] = {}
    for setting in _POOL_SETTINGS:
        parse = _PARSERS[setting.name]
        from_option = from_config = None
        if setting.name in options:
            from_option = parse(f"the PgPool() option {setting.name!r}", options[setting.name])
        if setting.key in config:
            from_config = parse(setting.key, config[setting.key])
        if setting.name == "connect_args":
            values[setting.name] = _merged_args(from_option, from_config)
        elif setting.key in config:
            values[setting.name] = from_config
        elif setting.name in options:
            values[setting.name] = from_option
        else:
            values[setting.name] = _default(setting.name)
    if values["dsn"] is None:
        values["dsn"] = _dsn("the DATABASE_URL environment variable", os.environ.get("DATABASE_URL") or None)
    if values["dsn"] is None and not values["embedded"]:
        raise ConfigError(
            "PGPOOL_DSN is not set, nor the DATABASE_URL environment variable: set PGPOOL_DSN to a "
            "connection string such as 'postgresql://user:password@localhost:5432/dbname', "
            "or set PGPOOL_EMBEDDED = True to run a PostgreSQL server in the instance folder"
        )
    default = PoolSettings(**values)
    _checked(lambda: _validate.check_sizes("PGPOOL_MINCONN", default.minconn, "PGPOOL_MAXCONN", default.maxconn))
    settings = {DEFAULT_BIND: default}
    binds_key = _BY_NAME["binds"].key
    binds = _binds(binds_key, config[binds_key] if binds_key in config else options.get("binds"))
    for bind, spec in binds.items():
        settings[_bind_name(bind)] = _bind_settings(bind, spec, default)
    return settings


def _merged_args(option: Any, config: Any) -> Any:
    """connect_args of PgPool() and of the config, key by key, the config winning.

    A function (called for every new connection) is not merged with a dict:
    given both, that is an error; of two functions, the config's wins.
    """
    if not callable(option) and not callable(config):
        return {**(option or {}), **(config or {})}
    if callable(config) and (callable(option) or not option):
        return config
    if callable(option) and not config:
        return option
    raise ConfigError(
        "PGPOOL_CONNECT_ARGS and the PgPool() option 'connect_args' are a dict and a function: a function "
        "is not merged with a dict; give one of them only (the function may return the dict's arguments too)"
    )


def _bind_settings(bind: str, spec: Any, default: PoolSettings) -> PoolSettings:
    where = f"PGPOOL_BINDS[{bind!r}]"
    if isinstance(spec, str) or callable(spec):
        spec = {"dsn": spec}
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where} must be a DSN string or a dict of options such as {{'dsn': ..., 'maxconn': 5}}")
    allowed = [s.name for s in SETTINGS if s.bind]
    values: dict[str, Any] = {}
    for name, value in spec.items():
        option = str(name).lower().removeprefix(PREFIX.lower())
        if option not in allowed:
            hint = difflib.get_close_matches(option, allowed, n=1)
            did_you_mean = f"; did you mean {hint[0]!r}?" if hint else ""
            raise ConfigError(f"{where} has an unknown option {name!r}{did_you_mean}")
        values[option] = _PARSERS[option](f"{where}[{name!r}]", value)
    dsn = values.get("dsn")
    if dsn is None:
        raise ConfigError(f"{where} needs a 'dsn'")
    inherited = {s.name: getattr(default, s.name) for s in _POOL_SETTINGS if s.bind and s.name not in _NOT_INHERITED}
    inherited.update(minconn=_default("minconn"), maxconn=_default("maxconn"), embedded=False)
    # A bind connects as itself: a function giving the main pool's credentials
    # is not inherited, and a function DSN sets what it sets, unknown here.
    own_args = values.pop("connect_args", {})
    shared = default.connect_args if isinstance(default.connect_args, Mapping) else {}
    from_main = dsnlib.args_for_another_database(shared, dsn if isinstance(dsn, str) else "")
    if "network_timeout" in values or _sets_keepalives(dsn, own_args):
        # The bind's own bound (or its own keepalive values, which are the
        # whole bound, see _timeouts) is more specific than the app's
        # keepalive values: mixed in, they would change it.
        from_main = {k: v for k, v in from_main.items() if k not in KEEPALIVE_KEYS}
    inherited["connect_args"] = own_args if callable(own_args) else {**from_main, **own_args}
    settings = replace(default, **{**inherited, **values})
    _checked(lambda: _bind_sizes(where, settings))
    return settings


def _sets_keepalives(dsn: Any, connect_args: Any) -> bool:
    """Whether a bind's own DSN or connect_args, or the connection service they name, set a keepalive parameter."""
    try:
        params: dict[str, Any] = parse_dsn(dsn) if isinstance(dsn, str) else {}
    except psycopg2.ProgrammingError:
        params = {}  # refused when the pool connects, with libpq's reason
    if isinstance(connect_args, Mapping):
        params.update(connect_args)
    return bool(KEEPALIVE_KEYS & (set(params) | set(service_params(params))))


def _bind_sizes(where: str, settings: PoolSettings) -> None:
    try:
        _validate.check_sizes("minconn", settings.minconn, "maxconn", settings.maxconn)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _bind_name(bind: Any) -> str:
    if not isinstance(bind, str) or not bind or bind == DEFAULT_BIND:
        raise ConfigError(f"PGPOOL_BINDS keys must be non-empty names other than {DEFAULT_BIND!r}, got {bind!r}")
    return bind


# -- keys meant for us that are not ours -------------------------------------------


def _warn_unknown_keys(config: Mapping[str, Any]) -> None:
    for key in config:
        if not isinstance(key, str) or key in KNOWN_KEYS:
            continue
        if key.startswith(PREFIX):
            # A near miss first (PGPOOL_maxconn is PGPOOL_MAXCONN in the wrong
            # case, which difflib, comparing letters as they are, does not see).
            hint = difflib.get_close_matches(key, sorted(KNOWN_KEYS), n=1, cutoff=0.5)
            meant = _near_miss(key) or (hint[0] if hint else None)
        else:
            meant = _near_miss(key)
            if meant is None:
                continue
        did_you_mean = f"; did you mean {meant}?" if meant else ""
        warnings.warn(f"unknown config key {key}{did_you_mean}", PgPoolConfigWarning, stacklevel=_user_stacklevel())


def _squeeze(key: str) -> str:
    return "".join(c for c in key.upper() if c.isalnum())


_SQUEEZED = {_squeeze(key): key for key in sorted(KNOWN_KEYS)}


def _near_miss(key: str) -> str | None:
    """The known key that ``key`` was most likely meant to be, or None.

    A near miss is a known key up to letter case, separators (``pgpool_maxconn``,
    ``PG_POOL_MAXCONN``, ``PGPOOLMAXCONN``) and a slip or two of typing
    (``PGPOL_MAXCONN``; two only in long keys). Other extensions' keys that
    merely start with ``PG`` (``PGHOST``, ``PG_MAXCONN``) are further away.
    """
    squeezed = _squeeze(key)
    best: tuple[int, str] | None = None
    for target, known in _SQUEEZED.items():
        slips = _edit_distance(squeezed, target, limit=2)
        allowed = 2 if len(target) >= 14 else 1
        if slips <= allowed and (best is None or slips < best[0]):
            best = (slips, known)
    return best[1] if best else None


def _edit_distance(a: str, b: str, *, limit: int) -> int:
    """Levenshtein distance of ``a`` and ``b``, or ``limit + 1`` once it is sure to exceed ``limit``."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    previous = list(range(len(b) + 1))
    for i, char in enumerate(a, 1):
        current = [i]
        for j, other in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char != other)))
        if min(current) > limit:
            return limit + 1
        previous = current
    return previous[-1]


def _user_stacklevel() -> int:
    """The stacklevel of the first caller outside flask_pgpool: warnings point at the user's code."""
    package_dir = os.path.dirname(os.path.abspath(__file__))
    frame = sys._getframe(1)
    level = 1
    while frame.f_back is not None and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == package_dir:
        frame = frame.f_back
        level += 1
    return level
