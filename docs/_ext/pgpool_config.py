"""The ``.. pgpool-config::`` directive: the table of ``PGPOOL_`` keys, rendered from the code.

The table is built from the key definitions in ``flask_pgpool._config`` when the
docs are built, so the documentation cannot list a key the code does not read,
miss one it does, or show another default. A key of ``KNOWN_KEYS`` without a row
stops the build.

:func:`settings` is the one place that knows where the definitions live.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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
    ``default``, ``kind``, ``bind`` and ``doc``."""
    return _config.SETTINGS


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

