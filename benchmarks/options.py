"""Command-line pieces the benchmark entry points share."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable

__all__ = ["names_from"]


def names_from(known: Iterable[str], what: str) -> Callable[[str], list[str]]:
    """An argparse ``type``: comma-separated names, each one of ``known``.

    An unknown name is a usage error that names it and lists the choices.
    """
    choices = list(known)

    def parse(text: str) -> list[str]:
        names = [name.strip() for name in text.split(",") if name.strip()]
        unknown = [name for name in names if name not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {what}: {', '.join(unknown)}; choose from {', '.join(choices)}")
        return names

    return parse
