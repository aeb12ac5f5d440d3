"""Connection strings: validation, and the only place where passwords are masked.

Every DSN, connection error or log line that leaves the package goes through
:func:`mask_dsn` or :func:`redact`, so a password never reaches a log,
an exception, a repr, the CLI or an HTTP response.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

import psycopg2
from psycopg2.extensions import make_dsn, parse_dsn

__all__ = ["MASK", "InvalidDSN", "describe", "is_url", "mask_args", "mask_dsn", "parse", "redact", "secrets_of"]

MASK = "***"
_URL_SCHEMES = ("postgresql://", "postgres://")
# Connection parameters whose values are secrets.
_SECRET_KEYS = frozenset({"password", "sslpassword"})


class InvalidDSN(ValueError):
    """The connection string cannot be parsed. The message never quotes it."""


def is_url(dsn: str) -> bool:
    return dsn.strip().lower().startswith(_URL_SCHEMES)


def parse(dsn: str) -> dict[str, str]:
    """Return the DSN's parameters; raise :class:`InvalidDSN` without echoing it.

    libpq's own parse error quotes the text around the mistake, which may be
    the password, so it is replaced by a message that quotes nothing.
    """
    try:
        return dict(parse_dsn(dsn))
    except psycopg2.ProgrammingError:
        raise InvalidDSN(
            "not a valid libpq connection string: use key=value pairs "
            "('host=localhost dbname=app user=app') or a URL "
            "('postgresql://user:password@localhost:5432/app'); "
            "the value is not shown because it may contain a password"
        ) from None


def secrets_of(dsn: str, connect_args: Mapping[str, object] | None = None) -> list[str]:
    """The secret values in a DSN and connect arguments, for :func:`redact`."""
    found: list[str] = []
    try:
        params = parse(dsn)
    except InvalidDSN:
        params = {}
    for key in _SECRET_KEYS:
        for source in (params, connect_args or {}):
            value = source.get(key)
            if value:
                found.append(str(value))
    return found


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace every secret in ``text`` (also in URL-encoded form) by ``***``."""
    for secret in secrets:
        if not secret:
            continue
        for form in {secret, quote(secret, safe=""), quote(secret)}:
            text = text.replace(form, MASK)
    # A password written into a URL or key=value string we were not told about.
    text = re.sub(r"(postgres(?:ql)?://[^:/@\s]*:)[^@\s]*@", rf"\1{MASK}@", text)
    return re.sub(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", rf"\1{MASK}", text)


def mask_args(args: Mapping[str, object]) -> dict[str, object]:
    """Connection keyword arguments as they may be shown: secret values replaced."""
    return {key: MASK if key in _SECRET_KEYS else value for key, value in args.items()}


def mask_dsn(dsn: str) -> str:
    """The DSN as it may be shown to a person: same form, password replaced."""
    if is_url(dsn):
        parts = urlsplit(dsn.strip())
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, hostinfo = netloc.rsplit("@", 1)
            if ":" in userinfo:
                userinfo = userinfo.split(":", 1)[0] + ":" + MASK
            netloc = f"{userinfo}@{hostinfo}"
        query = urlencode(
            [
                (k, MASK if unquote(k) in _SECRET_KEYS else v)
                for k, v in parse_qsl(parts.query, keep_blank_values=True)
            ],
            safe="/*",
        )
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    try:
        params = parse(dsn)
    except InvalidDSN:
        return "<invalid connection string>"
    for key in _SECRET_KEYS & params.keys():
        params[key] = MASK
    return make_dsn(**params) if params else ""


def describe(dsn: str) -> str:
    """A short ``user@host:port/dbname`` label for logs and reprs."""
    try:
        params = parse(dsn)
    except InvalidDSN:
        return "<invalid connection string>"
    host = params.get("host") or params.get("hostaddr") or "localhost"
    port = params.get("port")
    where = f"{host}:{port}" if port else host
    user = params.get("user")
    dbname = params.get("dbname") or user or ""
    return f"{user + '@' if user else ''}{where}/{dbname}"
