"""Checks of pool sizes and durations, shared by the configuration and the engine.

Each function takes the label to name in the error (a ``PGPOOL_`` key, or an
option name such as ``"maxconn"``) and the value; it returns the value in its
canonical type or raises :class:`ValueError` with a message that starts with
the label and quotes the value. They parse nothing: turning ``"5"`` from the
environment into ``5`` is the configuration's job.
"""

from __future__ import annotations

import math

__all__ = ["optional_seconds", "seconds", "sizes", "whole_number"]


def whole_number(label: str, value: object, *, minimum: int) -> int:
    """``value`` if it is an int (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{label} must be a whole number >= {minimum}, got {value!r}")
    return value


def seconds(label: str, value: object) -> float:
    """``value`` as a float, if it is a finite number of seconds > 0."""
    if not _positive_number(value):
        raise ValueError(f"{label} must be a number of seconds > 0, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def optional_seconds(label: str, value: object, *, none_means: str, zero_means: str | None = None) -> float | None:
    """``value`` as a float, None for None; 0 only when ``zero_means`` says what it does.

    ``none_means`` and ``zero_means`` complete the error message: "or None
    {none_means}", "(0 {zero_means})".
    """
    if value is None:
        return None
    if zero_means is not None and not isinstance(value, bool) and isinstance(value, (int, float)) and value == 0:
        return 0.0
    if not _positive_number(value):
        at_least = f">= 0 (0 {zero_means})" if zero_means is not None else "> 0"
        raise ValueError(f"{label} must be a number of seconds {at_least}, or None {none_means}, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def sizes(min_label: str, minconn: object, max_label: str, maxconn: object) -> tuple[int, int]:
    """``(minconn, maxconn)`` if both are whole numbers (>= 0, >= 1) and minconn <= maxconn."""
    low = whole_number(min_label, minconn, minimum=0)
    high = whole_number(max_label, maxconn, minimum=1)
    if low > high:
        raise ValueError(f"{min_label} ({low}) must not be greater than {max_label} ({high})")
    return low, high


def _positive_number(value: object) -> bool:
    return (
        not isinstance(value, bool)
        and isinstance(value, (int, float))
        and math.isfinite(value)
        and value > 0
    )
