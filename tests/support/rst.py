"""Read the README and the docs pages the way the tests of their samples need.

Small and plain on purpose: sections by title, ``.. code-block::`` bodies,
``::`` literal blocks, and the rows of a ``list-table``.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

__all__ = [
    "DOCS",
    "README",
    "ROOT",
    "code_blocks",
    "list_table",
    "load_extension",
    "pages",
    "python_samples",
    "section",
    "sections",
]

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.rst"
DOCS = ROOT / "docs"

_ADORNMENT = re.compile(r"^([=\-~^\"'`#*+])\1+$")
_PYTHON_START = re.compile(r"^(import |from |@|def |class |app\.|[a-z_]+ = |# [\w/.]+\.py$)")


def pages() -> list[Path]:
    """The README and every page of the docs site."""
    return [README, *sorted(DOCS.glob("*.rst"))]


def sections(path: Path) -> dict[str, str]:
    """Every titled section of a page, by title: its text up to the next title of the same or a higher level."""
    lines = path.read_text(encoding="utf-8").splitlines()
    titles: list[tuple[int, str, int]] = []  # (line index, title, level)
    styles: list[tuple[str, bool]] = []
    for i in range(1, len(lines)):
        match = _ADORNMENT.match(lines[i])
        title = lines[i - 1]
        if not match or not title.strip() or _ADORNMENT.match(title) or len(lines[i]) < len(title.rstrip()):
            continue
        overlined = i >= 2 and lines[i - 2] == lines[i]
        style = (match.group(1), overlined)
        if style not in styles:
            styles.append(style)
        titles.append((i, title.strip(), styles.index(style)))
    found: dict[str, str] = {}
    for n, (i, title, level) in enumerate(titles):
        end = len(lines)
        for j, _, other in titles[n + 1 :]:
            if other <= level:
                end = j - 1
                break
        found.setdefault(title, "\n".join(lines[i + 1 : end]))
    return found


def section(path: Path, title: str) -> str:
    found = sections(path)
    assert title in found, f"{path.name} has no section {title!r}"
    return found[title]


def _indented_body(lines: list[str], start: int, indent: int) -> str:
    body: list[str] = []
    for following in lines[start:]:
        if following.strip() and len(following) - len(following.lstrip()) <= indent:
            break
        body.append(following)
    return textwrap.dedent("\n".join(body)).strip() + "\n"


def code_blocks(text: str, language: str) -> list[str]:
    """The ``.. code-block:: language`` bodies of ``text``, dedented."""
    lines = text.splitlines()
    blocks = []
    for i, line in enumerate(lines):
        match = re.match(r"^(\s*)\.\. code-block:: (\w+)\s*$", line)
        if match and match.group(2) == language:
            start = i + 1
            while start < len(lines) and lines[start].strip().startswith(":"):
                start += 1  # the directive's options
            blocks.append(_indented_body(lines, start, len(match.group(1))))
    return blocks


def python_samples(path: Path) -> list[tuple[str, str]]:
    """(section title, code) of every Python sample of a page: ``.. code-block:: python`` and
    ``::`` blocks that read as Python."""
    lines = path.read_text(encoding="utf-8").splitlines()
    samples: list[tuple[str, str]] = []
    title = ""
    for i, line in enumerate(lines):
        if i + 1 < len(lines) and _ADORNMENT.match(lines[i + 1]) and line.strip() and not _ADORNMENT.match(line):
            title = line.strip()
        is_python = line.strip() == ".. code-block:: python"
        if not (is_python or (line.endswith("::") and not line.lstrip().startswith(".."))):
            continue
        code = _indented_body(lines, i + 1, len(line) - len(line.lstrip()))
        if code.strip() and (is_python or _PYTHON_START.match(code)):
            samples.append((title, code))
    return samples


def list_table(text: str) -> list[list[str]]:
    """The rows of the first ``list-table`` of ``text``, each cell's text on one line."""
    rows: list[list[str]] = []
    in_table = False
    for line in text.splitlines():
        if line.startswith(".. list-table::"):
            in_table = True
            continue
        if not in_table:
            continue
        if line and not line.startswith(" "):
            break
        stripped = line.strip()
        if stripped.startswith("* -"):
            rows.append([stripped[3:].strip()])
        elif stripped.startswith("- ") or stripped == "-":
            rows[-1].append(stripped[1:].strip())
        elif stripped and rows and not stripped.startswith(":"):
            rows[-1][-1] = f"{rows[-1][-1]} {stripped}".strip()
    return rows


def load_extension(name: str) -> Any:
    """A module of the docs site's extensions (docs/_ext), imported from its file."""
    spec = importlib.util.spec_from_file_location(f"docs_ext_{name}", DOCS / "_ext" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
