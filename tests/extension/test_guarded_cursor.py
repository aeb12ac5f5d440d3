"""The checked ``cursor()`` of psycopg2's own connection class keeps psycopg2's signature and errors.

Not run over the user-configuration matrix: its connection classes
(LoggingConnection...) and autocommit have cursor() rules of their own, which
test_stale_use.py covers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from psycopg2.extensions import connection
from psycopg2.extras import RealDictCursor
from support.http import fetch_value

from flask_pgpool import StaleConnectionError, get_db


# A WITH HOLD cursor outlives its transaction: session state, which PgBouncer's transaction pooling does not keep.
@pytest.mark.no_pgbouncer
def test_cursor_takes_psycopg2s_arguments_by_position_and_by_name(make_app: Callable[..., Flask]) -> None:
    app = make_app(PGPOOL_MAXCONN=1)
    kept: list[connection] = []

    @app.get("/cursors")
    def cursors() -> dict[str, Any]:
        conn = get_db()
        kept.append(conn)
        seen: dict[str, Any] = {}
        with conn.cursor(None, RealDictCursor) as cur:  # name and cursor_factory by position
            cur.execute("SELECT 1 AS one")
            seen["positional"] = dict(cur.fetchone() or {})
        with conn.cursor("named_scrollable", scrollable=True) as cur:  # a server-side cursor
            cur.execute("SELECT generate_series(1, 3)")
            cur.fetchall()
            cur.scroll(0, mode="absolute")
            seen["scrolled_back_to"] = fetch_value(cur)
            seen["named"] = (cur.name, cur.scrollable, cur.withhold)
        conn.commit()
        held = conn.cursor("named_held", None, True)  # withhold by position: it outlives the commit
        held.execute("SELECT 42")
        conn.commit()
        seen["held"] = (held.withhold, fetch_value(held))
        held.close()
        # A wrong argument names the method the user called.
        with pytest.raises(TypeError, match=r"^connection\.cursor\(\) got an unexpected keyword argument 'nonsense'"):
            conn.cursor(nonsense=True)  # type: ignore[call-overload]
        return seen

    assert app.test_client().get("/cursors").json == {
        "positional": {"one": 1},
        "scrolled_back_to": 1,
        "named": ["named_scrollable", True, False],
        "held": [True, 42],
    }
    # The check is still there: the kept connection refuses to work after its request.
    with pytest.raises(StaleConnectionError):
        kept[0].cursor()
