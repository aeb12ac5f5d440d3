"""Every ``PGPOOL_`` configuration key: its default, parsing and validation.

Settings come from three places, the later winning: the defaults below, the
keyword options given to ``PgPool(...)``, and the app's ``PGPOOL_*`` config.
Errors name the key to fix and what it expects; a value that may contain a
password is never quoted.
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

from . import _dsn as dsnlib
from ._timeouts import DEFAULT_NETWORK_TIMEOUT

__all__ = ["DEFAULT_BIND", "ConfigError", "PgPoolConfigWarning", "PoolSettings", "read_settings"]

PREFIX = "PGPOOL_"
DEFAULT_BIND = "default"


class ConfigError(ValueError):
    """A ``PGPOOL_`` setting has a wrong type or value."""


class PgPoolConfigWarning(UserWarning):
    """A ``PGPOOL_`` key is not one flask-pgpool knows (a typo?)."""


@dataclass(frozen=True, repr=False)
class PoolSettings:
    """The validated settings of one pool."""

    dsn: str | None = None
    minconn: int = 1
    maxconn: int = 10
    timeout: float = 10.0
    max_waiting: int = 0
    max_idle: float = 600.0
    max_lifetime: float = 3600.0
    health_check: bool = True
    ping_after: float | None = 30.0
    leak_timeout: float | None = None
    connect_timeout: int = 5
    network_timeout: float | None = DEFAULT_NETWORK_TIMEOUT
    statement_timeout: float | None = None
    connect_args: Mapping[str, Any] = field(default_factory=dict)
    read_only: bool = False
    configure: Callable[..., None] | None = None
    reset: str | Callable[..., None] | None = None
    retry_after: int = 1
    embedded: bool = False

    def __repr__(self) -> str:
        # The DSN and the connect arguments may hold a password.
        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.dsn is not None:
            shown["dsn"] = dsnlib.mask_dsn(self.dsn)
        shown["connect_args"] = dsnlib.mask_args(self.connect_args)
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in shown.items())})"


# -- parsers: each takes (key, value) and returns the parsed value or raises ----


def _int(minimum: int) -> Callable[[str, Any], int]:
    def parse(key: str, value: Any) -> int:
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"{key} must be a whole number >= {minimum}, got {value!r}")
        return value

    return parse


def _seconds(key: str, value: Any) -> float:
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise ConfigError(f"{key} must be a number of seconds > 0, got {value!r}")
    return float(value)


def _optional_seconds(key: str, value: Any) -> float | None:
    if value is None:
        return None
    try:
        return _seconds(key, value)
    except ConfigError:
        raise ConfigError(f"{key} must be a number of seconds > 0, or None to turn it off, got {value!r}") from None


def _ping_after(key: str, value: Any) -> float | None:
    if value is None:
        return None
    if not isinstance(value, bool) and value in (0, "0"):
        return 0.0
    try:
        return _seconds(key, value)
    except ConfigError:
        raise ConfigError(
            f"{key} must be a number of seconds >= 0 (0 pings at every checkout), "
            f"or None to never ping, got {value!r}"
        ) from None


# Both bounds end up in milliseconds in a C int (tcp_user_timeout, statement_timeout).
_MAX_BOUND = 2_147_483


def _bound(key: str, value: Any) -> float | None:
    if value is None or (not isinstance(value, bool) and value in (0, "0")):
        return None
    try:
        seconds = _seconds(key, value)
        if seconds > _MAX_BOUND:
            raise ConfigError(key)
    except ConfigError:
        raise ConfigError(
            f"{key} must be a number of seconds > 0 (at most {_MAX_BOUND}), or 0 or None to turn it off, "
            f"got {value!r}"
        ) from None
    return seconds


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _bool(key: str, value: Any) -> bool:
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    # Flask's from_prefixed_env() turns FLASK_PGPOOL_READ_ONLY=1 into the int 1.
    if type(value) is int and value in (0, 1):
        return bool(value)
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be True or False, got {value!r}")
    return value


def _dsn(key: str, value: Any) -> str | None:
    # A blank DSN is almost always an unset environment variable, not a wish
    # for libpq's defaults: treat it as not set.
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        kind = type(value).__name__
        raise ConfigError(f"{key} must be a libpq connection string or a postgresql:// URL, got a {kind}")
    try:
        dsnlib.parse(value)
    except dsnlib.InvalidDSN as exc:
        raise ConfigError(f"{key} is {exc}") from None
    return value


def _mapping(key: str, value: Any) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ConfigError(f"{key} must be a dict of psycopg2.connect() keyword arguments, got {type(value).__name__}")
    return dict(value)


def _callable(key: str, value: Any) -> Callable[..., None] | None:
    if value is not None and not callable(value):
        raise ConfigError(f"{key} must be a function taking the new connection, or None, got {value!r}")
    return value  # type: ignore[no-any-return]


def _reset(key: str, value: Any) -> str | Callable[..., None] | None:
    if value is None or callable(value):
        return value  # type: ignore[no-any-return]
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise ConfigError(
        f"{key} must be SQL to run on each returned connection (such as 'DISCARD ALL'), "
        f"a function taking the connection, or None, got {value!r}"
    )


_PARSERS: dict[str, Callable[[str, Any], Any]] = {
    "dsn": _dsn,
    "minconn": _int(0),
    "maxconn": _int(1),
    "timeout": _seconds,
    "max_waiting": _int(0),
    "max_idle": _seconds,
    "max_lifetime": _seconds,
    "health_check": _bool,
    "ping_after": _ping_after,
    "leak_timeout": _optional_seconds,
    "connect_timeout": _int(0),
    "network_timeout": _bound,
    "statement_timeout": _bound,
    "connect_args": _mapping,
    "read_only": _bool,
    "configure": _callable,
    "reset": _reset,
    "retry_after": _int(0),
    "embedded": _bool,
}
assert set(_PARSERS) == {f.name for f in fields(PoolSettings)}

#: Keys that only the default pool has (a bind cannot set them).
_APP_ONLY = {"retry_after", "embedded"}
#: Every key flask-pgpool reads from ``app.config``.
KNOWN_KEYS = frozenset({PREFIX + name.upper() for name in _PARSERS} | {PREFIX + "BINDS"})


def option_names() -> list[str]:
    """The keyword options ``PgPool(...)`` accepts."""
    return [*_PARSERS, "binds"]


def check_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Check the names of ``PgPool(**options)``; values are checked at init_app."""
    for name in options:
        if name not in option_names():
            hint = difflib.get_close_matches(name, option_names(), n=1)
            did_you_mean = f"; did you mean {hint[0]!r}?" if hint else ""
            raise TypeError(f"PgPool() got an unknown option {name!r}{did_you_mean}")
    return dict(options)


def read_settings(config: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, PoolSettings]:
    """Validate the app's settings; return them per bind, the default bind first."""
    _warn_unknown_keys(config)
    values: dict[str, Any] = {}
    for name, parser in _PARSERS.items():
        key = PREFIX + name.upper()
        if key in config:
            values[name] = parser(key, config[key])
        elif name in options:
            values[name] = parser(f"the PgPool() option {name!r}", options[name])
    if values.get("dsn") is None:
        values["dsn"] = _dsn("the DATABASE_URL environment variable", os.environ.get("DATABASE_URL") or None)
    if values.get("dsn") is None and not values.get("embedded"):
        raise ConfigError(
            "PGPOOL_DSN is not set, nor the DATABASE_URL environment variable: set PGPOOL_DSN to a "
            "connection string such as 'postgresql://user:password@localhost:5432/dbname', "
            "or set PGPOOL_EMBEDDED = True to run a PostgreSQL server in the instance folder"
        )
    default = PoolSettings(**values)
    _check_bounds("PGPOOL_", default)
    settings = {DEFAULT_BIND: default}
    binds = config.get(PREFIX + "BINDS", options.get("binds")) or {}
    if not isinstance(binds, Mapping):
        raise ConfigError(f"PGPOOL_BINDS must be a dict of name -> DSN or dict of options, got {type(binds).__name__}")
    for bind, spec in binds.items():
        settings[_bind_name(bind)] = _bind_settings(bind, spec, default)
    return settings


def _bind_settings(bind: str, spec: Any, default: PoolSettings) -> PoolSettings:
    where = f"PGPOOL_BINDS[{bind!r}]"
    if isinstance(spec, str):
        spec = {"dsn": spec}
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where} must be a DSN string or a dict of options such as {{'dsn': ..., 'maxconn': 5}}")
    values: dict[str, Any] = {}
    for name, value in spec.items():
        option = str(name).lower().removeprefix(PREFIX.lower())
        if option not in _PARSERS or option in _APP_ONLY:
            allowed = sorted(set(_PARSERS) - _APP_ONLY)
            hint = difflib.get_close_matches(option, allowed, n=1)
            did_you_mean = f"; did you mean {hint[0]!r}?" if hint else ""
            raise ConfigError(f"{where} has an unknown option {name!r}{did_you_mean}")
        values[option] = _PARSERS[option](f"{where}[{name!r}]", value)
    if values.get("dsn") is None:
        raise ConfigError(f"{where} needs a 'dsn'")
    # A bind inherits the default pool's tuning, not its sizes or its DSN.
    inherited = replace(default, minconn=PoolSettings.minconn, maxconn=PoolSettings.maxconn, embedded=False)
    settings = replace(inherited, **values)
    _check_bounds(f"{where}: ", settings)
    return settings


def _bind_name(bind: Any) -> str:
    if not isinstance(bind, str) or not bind or bind == DEFAULT_BIND:
        raise ConfigError(f"PGPOOL_BINDS keys must be non-empty names other than {DEFAULT_BIND!r}, got {bind!r}")
    return bind


def _check_bounds(where: str, settings: PoolSettings) -> None:
    if settings.minconn > settings.maxconn:
        raise ConfigError(
            f"{where}MINCONN ({settings.minconn}) must not be greater than {where}MAXCONN ({settings.maxconn})"
            if where == PREFIX
            else f"{where}minconn ({settings.minconn}) must not be greater than maxconn ({settings.maxconn})"
        )


def _warn_unknown_keys(config: Mapping[str, Any]) -> None:
    for key in config:
        if isinstance(key, str) and key.startswith(PREFIX) and key not in KNOWN_KEYS:
            hint = difflib.get_close_matches(key, sorted(KNOWN_KEYS), n=1, cutoff=0.5)
            did_you_mean = f"; did you mean {hint[0]}?" if hint else ""
            warnings.warn(f"unknown config key {key}{did_you_mean}", PgPoolConfigWarning, stacklevel=_user_stacklevel())


def _user_stacklevel() -> int:
    """The stacklevel of the first caller outside flask_pgpool: warnings point at the user's code."""
    package_dir = os.path.dirname(os.path.abspath(__file__))
    frame = sys._getframe(1)
    level = 1
    while frame.f_back is not None and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == package_dir:
        frame = frame.f_back
        level += 1
    return level
