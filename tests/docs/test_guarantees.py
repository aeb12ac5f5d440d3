"""Every test that the Guarantees page names exists, in the file it names."""

from __future__ import annotations

import ast
import re

from support.rst import DOCS, ROOT


def named_tests() -> list[tuple[str, str]]:
    text = " ".join((DOCS / "guarantees.rst").read_text(encoding="utf-8").split())
    found = []
    for match in re.finditer(r"``(tests/[\w/]+\.py)``: ((?:``test_\w+``(?:, )?)+)", text):
        found += [(match.group(1), name) for name in re.findall(r"``(test_\w+)``", match.group(2))]
    return found


def test_every_named_test_exists() -> None:
    named = named_tests()
    assert len(named) >= 30
    for path, name in named:
        tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
        functions = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
        assert name in functions, f"docs/guarantees.rst names {path}::{name}, which does not exist"
