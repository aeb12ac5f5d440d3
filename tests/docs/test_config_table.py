"""The configuration page's table is rendered from the code: every key the code reads, its real default."""

from __future__ import annotations

from dataclasses import fields

from support.rst import DOCS, load_extension, section

from flask_pgpool._config import KNOWN_KEYS, PoolSettings


def test_every_key_has_one_row_with_the_codes_default() -> None:
    rows = load_extension("pgpool_config").rows()
    assert [row.key for row in rows].count("PGPOOL_DSN") == 1
    assert {row.key for row in rows} == KNOWN_KEYS
    defaults = {f.name: getattr(PoolSettings(), f.name) for f in fields(PoolSettings)}
    for row in rows:
        if row.name in defaults:
            assert row.default == defaults[row.name], row.key
        assert row.kind and row.doc.strip(), row.key
    assert {row.name for row in rows if not row.bind} == {"retry_after", "embedded", "binds"}


def test_the_configuration_page_uses_the_generated_table() -> None:
    text = section(DOCS / "configuration.rst", "Keys")
    assert ".. pgpool-config::" in text
    assert "PGPOOL_MAXCONN" not in text.split(".. pgpool-config::")[1].split("\n\n")[0]
