"""Helpers for reading test-client responses."""

from __future__ import annotations

from typing import Any

from werkzeug.test import TestResponse

from .userconfigs import first_value


def body(response: TestResponse) -> Any:
    """The response's JSON body; fails the test if there is none."""
    data = response.get_json(silent=True)
    assert data is not None, f"expected a JSON body, got {response.status}: {response.text[:200]!r}"
    return data


def fetch_value(cur: Any) -> Any:
    """The first column of the cursor's next row (whatever the cursor factory); fails the test if there is none."""
    return first_value(cur.fetchone())
