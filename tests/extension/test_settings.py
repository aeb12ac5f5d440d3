"""The declaration of the keys (``SETTINGS``), which the documentation is generated from, and
the shared checks of sizes and durations (``_validate``), which the config and the engine use.

Pure logic: no server is needed.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import pytest

from flask_pgpool import ConfigError
from flask_pgpool._config import DEFAULT_BIND, KNOWN_KEYS, SETTINGS, Setting, option_names, read_settings
from flask_pgpool._validate import check_sizes, nonnegative_seconds, optional_seconds, positive_seconds, whole_number

DSN = "host=127.0.0.1 port=9 dbname=app user=app"


def test_setting_is_a_frozen_record_of_the_documented_fields() -> None:
    assert [(f.name, f.type) for f in dataclasses.fields(Setting)] == [
        ("name", "str"),
        ("key", "str"),
        ("default", "object"),
        ("kind", "str"),
        ("bind", "bool"),
        ("doc", "str"),
    ]
    setting = SETTINGS[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        setting.name = "other"  # type: ignore[misc]


def test_every_key_is_declared_once() -> None:
    assert isinstance(SETTINGS, tuple) and all(isinstance(s, Setting) for s in SETTINGS)
    names = [s.name for s in SETTINGS]
    assert len(names) == len(set(names))
    assert {s.key for s in SETTINGS} == KNOWN_KEYS
    assert names == option_names()
    for s in SETTINGS:
        assert s.key == "PGPOOL_" + s.name.upper()
        assert s.kind and s.doc
        assert "\n" not in s.doc, f"{s.key}: the doc is one paragraph"


def test_the_declared_defaults_are_the_defaults() -> None:
    settings = read_settings({"PGPOOL_DSN": DSN}, {})[DEFAULT_BIND]
    for s in SETTINGS:
        if s.name == "dsn":
            assert s.default is None
        elif s.name == "binds":
            assert s.default == {} and list(read_settings({"PGPOOL_DSN": DSN}, {})) == [DEFAULT_BIND]
        else:
            assert getattr(settings, s.name) == s.default, s.key


def bind_value(name: str) -> Any:
    """A valid value of each option, to try in a bind."""
    return {"dsn": DSN, "connect_args": {}, "configure": print, "binds": {}}.get(
        name, next(s.default for s in SETTINGS if s.name == name)
    )


@pytest.mark.parametrize("setting", SETTINGS, ids=[s.key for s in SETTINGS])
def test_a_bind_may_set_what_the_declaration_says(setting: Setting) -> None:
    spec = {"dsn": DSN, setting.name: bind_value(setting.name)}
    config = {"PGPOOL_DSN": DSN, "PGPOOL_BINDS": {"reports": spec}}
    if setting.bind:
        read_settings(config, {})
    else:
        with pytest.raises(ConfigError, match=rf"PGPOOL_BINDS\['reports'\] has an unknown option '{setting.name}'"):
            read_settings(config, {})


# -- the shared checks ---------------------------------------------------------------


@pytest.mark.parametrize("label", ["PGPOOL_MAXCONN", "maxconn"])
def test_whole_number(label: str) -> None:
    assert whole_number(label, 3, 1) == 3
    for wrong in (0, -1, 1.5, "3", True, None):
        with pytest.raises(ValueError, match=rf"^{label} must be a whole number >= 1, got {re.escape(repr(wrong))}$"):
            whole_number(label, wrong, 1)


@pytest.mark.parametrize("label", ["PGPOOL_TIMEOUT", "timeout"])
def test_positive_seconds(label: str) -> None:
    assert positive_seconds(label, 2) == 2.0 and isinstance(positive_seconds(label, 2), float)
    assert positive_seconds(label, 0.25) == 0.25
    for wrong in (0, -1, math.inf, math.nan, "2", True, None):
        with pytest.raises(ValueError, match=rf"^{label} must be a number of seconds > 0, got "):
            positive_seconds(label, wrong)


def test_nonnegative_seconds() -> None:
    assert nonnegative_seconds("ping_after", 0) == 0.0
    for wrong in (-1, math.inf, math.nan, "0", False, None):
        with pytest.raises(ValueError, match=r"^ping_after must be a number of seconds >= 0, got "):
            nonnegative_seconds("ping_after", wrong)


def test_optional_seconds() -> None:
    assert optional_seconds("leak_timeout", None, none_means="to turn it off") is None
    assert optional_seconds("leak_timeout", 3, none_means="to turn it off") == 3.0
    with pytest.raises(ValueError, match=r"^leak_timeout must be a number of seconds > 0, or None to turn it off"):
        optional_seconds("leak_timeout", 0, none_means="to turn it off")
    ping = {"none_means": "to never ping", "zero_means": "pings at every checkout"}
    assert optional_seconds("ping_after", 0, **ping) == 0.0
    for wrong in (-1, False, "0", math.nan):
        with pytest.raises(
            ValueError,
            match=r"^ping_after must be a number of seconds >= 0 \(0 pings at every checkout\), or None to never ping",
        ):
            optional_seconds("ping_after", wrong, **ping)


def test_check_sizes() -> None:
    check_sizes("minconn", 0, "maxconn", 1)
    with pytest.raises(ValueError, match=r"^minconn \(5\) must not be greater than maxconn \(4\)$"):
        check_sizes("minconn", 5, "maxconn", 4)
    with pytest.raises(ValueError, match=r"^PGPOOL_MINCONN must be a whole number >= 0, got -1$"):
        check_sizes("PGPOOL_MINCONN", -1, "PGPOOL_MAXCONN", 4)
    with pytest.raises(ValueError, match=r"^PGPOOL_MAXCONN must be a whole number >= 1, got 0$"):
        check_sizes("PGPOOL_MINCONN", 0, "PGPOOL_MAXCONN", 0)
