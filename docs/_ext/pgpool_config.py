"""The ``.. pgpool-config::`` directive: the table of ``PGPOOL_`` keys, rendered from the code.

The table is built from the key definitions in ``flask_pgpool._config`` when the
docs are built, so the documentation cannot list a key the code does not read,
miss one it does, or show another default. A key of ``KNOWN_KEYS`` without a row
stops the build.

:func:`settings` is the one place that knows where the definitions live.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, fields
from typing import TYPE_CHECKING, Any

from flask_pgpool import _config

if TYPE_CHECKING:
    from sphinx.application import Sphinx

__all__ = ["Row", "rows", "settings", "setup"]


@dataclass(frozen=True)
class Row:
    """One configuration key, with the fields of ``flask_pgpool._config.Setting``."""

    name: str
    key: str
    default: Any
    kind: str
    bind: bool
    doc: str


def settings() -> Sequence[Any]:
    """Every configuration key as the code declares it: objects with ``name``, ``key``,
    ``default``, ``kind``, ``bind`` and ``doc``.

    Once ``flask_pgpool._config.SETTINGS`` exists, this body becomes
    ``return _config.SETTINGS`` and the fallback below goes.
    """
    return _settings_from_parsers()


def rows() -> list[Row]:
    """The rows of the table, checked against the keys the code reads."""
    found = [Row(s.name, s.key, s.default, s.kind, s.bind, s.doc) for s in settings()]
    keys = {row.key for row in found}
    if keys != set(_config.KNOWN_KEYS):
        missing = sorted(set(_config.KNOWN_KEYS) - keys)
        unknown = sorted(keys - set(_config.KNOWN_KEYS))
        raise ValueError(
            f"pgpool-config: the table and flask_pgpool._config disagree: keys without a row {missing}, "
            f"rows for keys the code does not read {unknown}"
        )
    return found


# -- until _config.SETTINGS: the same facts from _PARSERS and PoolSettings -----

# What each parser accepts, by the parser's qualified name.
_KINDS = {
    "_dsn": "DSN",
    "_int.<locals>.parse": "int",
    "_seconds": "seconds",
    "_optional_seconds": "seconds or None",
    "_ping_after": "seconds or None",
    "_bool": "bool",
    "_mapping": "dict",
    "_callable": "function or None",
    "_reset": "SQL, function or None",
    "_bound": "seconds, 0 or None",
}

# The meaning of each key (the ``doc`` field of Setting, once it exists).
_FALLBACK_DOCS = {
    "dsn": "The database: a libpq connection string (``host=db dbname=app user=app``) or a URL "
    "(``postgresql://app:secret@db:5432/app``). When unset or blank, the ``DATABASE_URL`` environment "
    "variable is used. The password is never shown: not in errors, logs, reprs, the CLI or HTTP responses.",
    "minconn": "Connections kept open once the pool has been used (opened in the background, never at "
    "``init_app``).",
    "maxconn": "Most connections open at once, per process. Further checkouts wait.",
    "timeout": "Seconds a checkout waits for a free connection (or for the server to answer) before it fails "
    "with ``PoolTimeout``: a 503 in a request.",
    "max_waiting": "Most checkouts waiting at once; one more fails at once with ``TooManyRequests`` (a 503). "
    "``0``: no limit.",
    "max_idle": "Seconds an idle connection above ``PGPOOL_MINCONN`` is kept before it is closed.",
    "max_lifetime": "Seconds after which a connection is closed and replaced (up to 10 % sooner, at random, so "
    "that connections do not all expire together).",
    "health_check": "Check at checkout that an idle connection is still alive and replace it if not. Looks at "
    "the socket, without a round trip, when it can.",
    "ping_after": "Seconds of idleness after which the checkout check also sends ``SELECT 1``. ``0``: at every "
    "checkout; ``None``: never.",
    "leak_timeout": "Seconds a connection may stay checked out before a warning is logged with the stack trace "
    "of its checkout. ``None``: off.",
    "connect_timeout": "Seconds a new connection may take to open (libpq's ``connect_timeout``), unless the DSN "
    "sets one. ``0``: no limit.",
    "network_timeout": "Seconds after which a connection whose network went silent is given up (TCP keepalives "
    "and ``tcp_user_timeout``): the request gets a 503. A value set in the DSN or ``PGPOOL_CONNECT_ARGS`` wins. "
    "``0`` or ``None``: off. See Network faults.",
    "statement_timeout": "Seconds after which the server cancels a statement (``statement_timeout``, sent as a "
    "startup option, so not through PgBouncer). ``0`` or ``None``: off. See Network faults.",
    "connect_args": "More keyword arguments for ``psycopg2.connect()``, such as "
    '``{"application_name": "shop", "sslmode": "require"}``.',
    "read_only": "Open every connection as a read-only session.",
    "configure": "A function called with each new connection, once (register adapters, ``SET`` session "
    "settings). A transaction it leaves open is rolled back: commit what must last.",
    "reset": "Run on every returned connection so that no session state reaches the next request: SQL run in "
    'autocommit (``"DISCARD ALL"``) or a function given the connection. It costs one round trip per request; '
    "``PGPOOL_CONFIGURE`` runs again after it. A reset that fails closes the connection.",
    "retry_after": "Seconds in the ``Retry-After`` header of the 503 response. ``0``: no header.",
    "embedded": "With no DSN, run a private PostgreSQL server (the ``embedded`` extra) whose data lives in the "
    "app's instance folder. Started by the first checkout. For development.",
    "binds": 'More databases, each with a pool of its own: ``{"reports": "postgresql://..."}`` or '
    '``{"reports": {"dsn": "...", "maxconn": 5}}``, the options in lower case. Use ``get_db("reports")``. '
    "A bind takes the tuning of the main pool, not its DSN nor its sizes.",
}


def _settings_from_parsers() -> list[Row]:
    defaults = {f.name: _field_default(f.default, f.default_factory) for f in fields(_config.PoolSettings)}
    found = [
        Row(
            name=name,
            key=_config.PREFIX + name.upper(),
            default=defaults[name],
            kind=_KINDS[parser.__qualname__],
            bind=name not in _config._APP_ONLY,
            doc=_FALLBACK_DOCS[name],
        )
        for name, parser in _config._PARSERS.items()
    ]
    found.append(Row("binds", _config.PREFIX + "BINDS", {}, "dict", False, _FALLBACK_DOCS["binds"]))
    return found


def _field_default(default: Any, factory: Any) -> Any:
    if default is not MISSING:
        return default
    return factory() if callable(factory) else None


# -- rendering ----------------------------------------------------------------


def _literal(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, Mapping):
        value = dict(value)
    return f"``{value!r}``"


def _table(found: list[Row]) -> list[str]:
    lines = [
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: 24 10 12 8 46",
        "",
        "   * - Key",
        "     - Default",
        "     - Type",
        "     - Per bind",
        "     - Meaning",
    ]
    for row in found:
        doc = " ".join(row.doc.split())
        lines += [
            f"   * - ``{row.key}``",
            f"     - {_literal(row.default)}",
            f"     - {row.kind}",
            f"     - {'yes' if row.bind else 'no'}",
            f"     - {doc}",
        ]
    return lines


def setup(app: Sphinx) -> dict[str, Any]:
    # Sphinx is imported here only: the tests use the functions above without it.
    from docutils import nodes
    from docutils.statemachine import StringList
    from sphinx.util.docutils import SphinxDirective

    class ConfigDirective(SphinxDirective):
        """``.. pgpool-config::`` renders the table of every ``PGPOOL_`` key."""

        has_content = False

        def run(self) -> list[nodes.Node]:
            source = self.get_source_info()[0] or "generated"
            container = nodes.container()
            self.state.nested_parse(StringList(_table(rows()), source=source), self.content_offset, container)
            return [container]

    app.add_directive("pgpool-config", ConfigDirective)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}

