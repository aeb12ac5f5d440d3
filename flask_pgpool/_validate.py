"""Checks of pool sizes and durations, shared by the pool and the configuration.

Each function takes the label to name in the error (an option name such as
``"maxconn"`` for the pool, a ``PGPOOL_`` key for the configuration) and the
value; it returns the value in its canonical type or raises
:class:`ValueError` with a message that starts with the label and quotes the
value. They parse nothing: turning ``"5"`` from the environment into ``5`` is
the configuration's job.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["check_sizes", "nonnegative_seconds", "optional_seconds", "positive_seconds", "whole_number"]


def whole_number(name: str, value: Any, minimum: int) -> int:
    """``value`` if it is an int (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return value


def check_sizes(min_name: str, minconn: Any, max_name: str, maxconn: Any) -> None:
    """Both whole numbers (minconn >= 0, maxconn >= 1), and minconn <= maxconn."""
    whole_number(min_name, minconn, 0)
    whole_number(max_name, maxconn, 1)
    if minconn > maxconn:
        raise ValueError(f"{min_name} ({minconn}) must not be greater than {max_name} ({maxconn})")


def positive_seconds(name: str, value: Any) -> float:
    """``value`` as a float, if it is a finite number of seconds > 0."""
    if not _seconds(value) or value == 0:
        raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")
    return float(value)


def nonnegative_seconds(name: str, value: Any) -> float:
    """``value`` as a float, if it is a finite number of seconds >= 0."""
    if not _seconds(value):
        raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}")
    return float(value)


def optional_seconds(name: str, value: Any, *, none_means: str, zero_means: str | None = None) -> float | None:
    """``value`` as a float, or None; 0 only when ``zero_means`` says what it does.

    ``none_means`` and ``zero_means`` complete the error message: "..., or
    None {none_means}" and "(0 {zero_means})".
    """
    if value is None:
        return None
    if _seconds(value) and (value > 0 or zero_means is not None):
        return float(value)
    at_least = f">= 0 (0 {zero_means})" if zero_means is not None else "> 0"
    raise ValueError(f"{name} must be a number of seconds {at_least}, or None {none_means}, got {value!r}")


def _seconds(value: Any) -> bool:
    """A finite number >= 0 (a bool is not a number of seconds)."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and value >= 0
