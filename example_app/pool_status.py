"""A page with the live stats of the app's connection pools."""

from __future__ import annotations

from flask import Blueprint, current_app, render_template
from flask.typing import ResponseReturnValue

from flask_pgpool import STATS_KEYS

bp = Blueprint("pool_status", __name__)

# What each stat means, for the page.
HELP = {
    "pool_min": "connections kept open once in use",
    "pool_max": "most connections the pool opens",
    "pool_size": "connections open now (in use, idle or opening)",
    "pool_available": "idle connections, ready to hand out",
    "requests_waiting": "requests waiting for a connection now",
    "requests_num": "connections asked for",
    "requests_queued": "requests that had to wait",
    "requests_wait_ms": "total time spent waiting (ms)",
    "requests_errors": "requests that got no connection (timeout, too many waiting)",
    "returns_bad": "connections returned broken and closed",
    "connections_num": "connections opened to the server",
    "connections_ms": "total time spent connecting (ms)",
    "connections_errors": "failed connection attempts",
    "connections_lost": "connections found dead and replaced",
}


@bp.get("/pool")
def pool_page() -> ResponseReturnValue:
    pools = current_app.extensions["pgpool"].get_pools()
    return render_template(
        "pool.html",
        pools={name: (pool.dsn, pool.get_stats()) for name, pool in pools.items()},
        keys=STATS_KEYS,
        help=HELP,
    )
