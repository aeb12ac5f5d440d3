"""Connection strings: validation, labels, and the only place where passwords are masked.

Every DSN, connection error or log line that leaves the package goes through
:func:`mask_dsn`, :func:`describe` or :func:`redact`, so a password never
reaches a log, an exception, a repr, the CLI or an HTTP response.

URLs are split the way libpq splits them, not the way :mod:`urllib.parse`
does: libpq ends the user name and password at the first ``@`` and knows no
``#`` fragment, so a password holding ``?`` or ``#`` is still the password.
A URL libpq would read differently from what its author meant (a raw ``@``
or ``/`` in the password) is refused by :func:`check` and never shown.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import quote, unquote

import psycopg2
from psycopg2.extensions import make_dsn, parse_dsn

__all__ = [
    "IDENTITY_KEYS",
    "MASK",
    "InvalidDSN",
    "args_for_another_database",
    "check",
    "describe",
    "is_url",
    "mask_args",
    "mask_dsn",
    "parse",
    "redact",
    "secrets_of",
]

MASK = "***"
_URL_SCHEMES = ("postgresql://", "postgres://")
# Connection parameters whose values are secrets.
_SECRET_KEYS = frozenset({"password", "sslpassword"})
#: Connection parameters that say which server and database, and as whom: a
#: bind of another database never takes them from the main pool's connect_args.
IDENTITY_KEYS = frozenset(
    {
        "host",
        "hostaddr",
        "port",
        "dbname",
        "database",  # psycopg2's alias of dbname
        "user",
        "password",
        "passfile",
        "service",
        "target_session_attrs",
        "load_balance_hosts",
        "sslcert",
        "sslkey",
        "sslpassword",
        "krbsrvname",
        "requirepeer",
    }
)
_HIDDEN = "<connection string not shown: percent-encode the special characters of its user name and password>"
_INVALID = "<invalid connection string>"


class InvalidDSN(ValueError):
    """The connection string cannot be used. The message never quotes it, and reads after a key:
    ``f"PGPOOL_DSN {exc}"``."""


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
            "is not a valid libpq connection string: use key=value pairs "
            "('host=localhost dbname=app user=app') or a URL "
            "('postgresql://user:password@localhost:5432/app'); "
            "the value is not shown because it may contain a password"
        ) from None


def check(dsn: str) -> dict[str, str]:
    """Like :func:`parse`, and also refuse a URL that libpq would read otherwise than meant.

    libpq takes the first ``@`` as the end of the password and a ``/`` as the
    start of the database name, so an unencoded ``@`` or ``/`` in a password
    sends part of it as a host or database name, where any message may show it.
    """
    params = parse(dsn)
    if is_url(dsn) and _split_url(dsn).ambiguous:
        raise InvalidDSN(
            "is a URL whose user name or password holds a raw '@' or '/': percent-encode them "
            "('@' as %40, '/' as %2F; urllib.parse.quote(password, safe='') does it); "
            "the value is not shown because it may contain a password"
        )
    return params


@dataclass(frozen=True)
class _Url:
    """The raw parts of a postgresql:// URL, as libpq delimits them (nothing decoded)."""

    scheme: str  # "postgresql://"
    userinfo: str | None  # "user:password", before the first "@"
    hosts: str  # "a:5432,b:5433", up to "/" or "?"
    path: str | None  # the database name, after "/"
    query: str | None  # after "?"

    @property
    def ambiguous(self) -> bool:
        # A host never holds "@"; without user info, an "@" in the database
        # name means a "/" in the password ended the look-ahead for it.
        return "@" in self.hosts or (self.userinfo is None and "@" in (self.path or ""))

    def join(self) -> str:
        text = self.scheme + (f"{self.userinfo}@" if self.userinfo is not None else "") + self.hosts
        if self.path is not None:
            text += "/" + self.path
        if self.query is not None:
            text += "?" + self.query
        return text


def _split_url(dsn: str) -> _Url:
    text = dsn.strip()
    scheme_end = text.index("://") + 3
    scheme, rest = text[:scheme_end], text[scheme_end:]
    userinfo = None
    # libpq looks for the "@" that ends the user info only up to the first "/".
    at = re.match(r"[^@/]*@", rest)
    if at:
        userinfo, rest = rest[: at.end() - 1], rest[at.end() :]
    hosts_end = re.search(r"[/?]", rest)
    hosts = rest[: hosts_end.start()] if hosts_end else rest
    rest = rest[len(hosts) :]
    path = query = None
    if rest.startswith("/"):
        path, _, after = rest[1:].partition("?")
        query = after if "?" in rest else None
    elif rest.startswith("?"):
        query = rest[1:]
    return _Url(scheme, userinfo, hosts, path, query)


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
    if is_url(dsn):
        url = _split_url(dsn)
        if url.ambiguous:
            # libpq saw only part of the password; the rest went elsewhere.
            # Mask all that may be it: from the user name's ":" to the last "@".
            head = dsn.strip()[len(url.scheme) :].split("?", 1)[0]
            colon, last_at = head.find(":"), head.rfind("@")
            if 0 <= colon < last_at:
                span = head[colon + 1 : last_at]
                found += [span, unquote(span), *(part for part in re.split(r"[@/]", span) if len(part) >= 3)]
    return found


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace every secret in ``text`` (also URL-encoded or escaped) by ``***``."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        escaped = secret.replace("\\", "\\\\").replace("'", "\\'")
        for form in sorted({secret, quote(secret, safe=""), quote(secret), escaped}, key=len, reverse=True):
            text = text.replace(form, MASK)
    # A password written into a URL or key=value string we were not told about.
    text = re.sub(r"(postgres(?:ql)?://[^:/@\s]*:)\S*@", rf"\1{MASK}@", text)
    # In a URL's query the value ends at the next parameter.
    text = re.sub(r"([?&](?:ssl)?password=)[^&\s]*", rf"\1{MASK}", text)
    return re.sub(r"(?<![?&\w])((?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'?|(?:\\.|\S)+)", rf"\1{MASK}", text)


def mask_args(args: Mapping[str, object]) -> dict[str, object]:
    """Connection keyword arguments as they may be shown: secret values replaced."""
    return {key: MASK if key in _SECRET_KEYS else value for key, value in args.items()}


def mask_dsn(dsn: str) -> str:
    """The DSN as it may be shown to a person: same form, every password replaced whole."""
    if is_url(dsn):
        url = _split_url(dsn)
        if url.ambiguous:
            return _HIDDEN
        userinfo = url.userinfo
        if userinfo is not None and ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":" + MASK
        query = url.query
        if query is not None:
            query = "&".join(_mask_query_param(param) for param in query.split("&"))
        return _Url(url.scheme, userinfo, url.hosts, url.path, query).join()
    try:
        params = parse(dsn)
    except InvalidDSN:
        return _INVALID
    for key in _SECRET_KEYS & params.keys():
        params[key] = MASK
    return make_dsn(**params) if params else ""


def _mask_query_param(param: str) -> str:
    key, sep, _value = param.partition("=")
    return f"{key}={MASK}" if sep and unquote(key) in _SECRET_KEYS else param


def describe(dsn: str) -> str:
    """A short ``user@host:port/dbname`` label for logs and reprs; several hosts are listed."""
    if is_url(dsn) and _split_url(dsn).ambiguous:
        return _HIDDEN
    try:
        params = parse(dsn)
    except InvalidDSN:
        return _INVALID
    user = params.get("user")
    dbname = params.get("dbname") or user or ""
    return f"{user + '@' if user else ''}{_hosts_label(params)}/{dbname}"


def _hosts_label(params: Mapping[str, str]) -> str:
    hosts = params.get("host", "").split(",")
    addrs = params.get("hostaddr", "").split(",")
    ports = params.get("port", "").split(",")
    labels = []
    for i in range(max(len(hosts), len(addrs))):
        host = (hosts[i] if i < len(hosts) else "") or (addrs[i] if i < len(addrs) else "") or "localhost"
        if ":" in host and not host.startswith("/"):
            host = f"[{host}]"  # IPv6: keep the port apart
        # One port applies to every host, as in libpq.
        port = ports[0] if len(ports) == 1 else (ports[i] if i < len(ports) else "")
        labels.append(f"{host}:{port}" if port else host)
    return ",".join(labels)


def args_for_another_database(connect_args: Mapping[str, object], dsn: str) -> dict[str, object]:
    """The connect arguments a pool of ``dsn`` takes from another pool's.

    Not those that say where and as whom to connect (:data:`IDENTITY_KEYS`),
    nor those ``dsn`` sets itself: a keyword argument would override the DSN.
    """
    own = parse(dsn).keys()
    return {key: value for key, value in connect_args.items() if key not in IDENTITY_KEYS and key not in own}
