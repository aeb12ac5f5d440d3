"""Command-line pieces the benchmark entry points share."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["pick"]


def pick(text: str, known: Iterable[str], what: str) -> list[str]:
    """The comma-separated names in ``text``; ValueError naming the unknown ones and the choices."""
    choices = list(known)
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in choices]
    if unknown:
        raise ValueError(f"unknown {what}: {', '.join(unknown)}; choose from {', '.join(choices)}")
    return names
