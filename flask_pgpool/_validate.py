"""Validators of sizes and durations, shared by the pool and the configuration.

Each takes the name to quote in its error (an option name for the pool, a
``PGPOOL_`` key for the configuration) and raises ValueError naming it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["check_sizes", "nonnegative_seconds", "positive_seconds", "whole_number"]


def whole_number(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return value


def check_sizes(min_name: str, minconn: Any, max_name: str, maxconn: Any) -> None:
    whole_number(min_name, minconn, 0)
    whole_number(max_name, maxconn, 1)
    if minconn > maxconn:
        raise ValueError(f"{min_name} ({minconn}) must not be greater than {max_name} ({maxconn})")


def positive_seconds(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")
    return float(value)


def nonnegative_seconds(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
        raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}")
    return float(value)
