"""docs/architecture.rst's module map names every private module of the package, and no other."""

from __future__ import annotations

import re
from pathlib import Path

import flask_pgpool

PACKAGE = Path(flask_pgpool.__file__).resolve().parent
PAGE = PACKAGE.parent / "docs" / "architecture.rst"


def test_the_module_map_lists_every_private_module() -> None:
    text = PAGE.read_text()
    section = text[text.index("Module map") : text.index("\nLocks\n")]
    # Map entries are definition terms: lines that start with ``_name``.
    terms = [line for line in section.splitlines() if line.startswith("``_")]
    mapped = {name for line in terms for name in re.findall(r"``(_\w+)``", line)}
    modules = {path.stem for path in PACKAGE.glob("_*.py") if path.stem != "__init__"}
    assert modules - mapped == set(), "modules missing from the map"
    assert mapped - modules == set(), "the map names modules that do not exist"
