"""The same guarantees under every WSGI server the docs give a recipe for.

Each recipe (docs/servers.rst) starts a real server on ``served_app:app`` with
several processes or threads, and the test checks what users rely on:
concurrent requests all succeed, no process holds more than ``maxconn``
sessions, no server session is used by two processes (each answer names its
worker pid and backend pid), sessions the server ended are replaced without a
failed request, and a shutdown leaves no session behind. Recipes that load
the app before forking (gunicorn --preload, uWSGI without lazy-apps) load one
that queries at import: its master holds a connection that no worker may use
or close.

gunicorn gthread has its own module (test_gunicorn.py); gevent's timing is in
test_gevent.py.
"""

from __future__ import annotations

import importlib.util
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from psycopg2.extensions import connection
from support.poolkit import terminate
from support.wsgiserver import Load, Server, SessionPeak, eventually, free_port, load, running, venv_script

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Recipe:
    """One way to serve the app, as docs/servers.rst gives it."""

    id: str
    processes: int
    concurrency: int  # requests one process serves at once
    maxconn: int
    stop_signal: signal.Signals
    loads_before_fork: bool
    command: Callable[[int], list[str]]  # port -> argv
    missing: Callable[[], str | None]  # why it cannot run here, or None
    #: PGPOOL_MINCONN: above 1 the master (loads_before_fork) refills its pool
    #: in background threads after its import-time query, up to the fork.
    minconn: int = 1


def _no_module(*names: str) -> Callable[[], str | None]:
    def missing() -> str | None:
        for name in names:
            if importlib.util.find_spec(name) is None:
                return f"{name} is not installed (pip install -e '.[servers]')"
        return None

    return missing


def _no_uwsgi() -> str | None:
    if venv_script("uwsgi") is None:
        return "uWSGI is not installed (pip install uwsgi: it compiles, and needs a C compiler and Python headers)"
    return None


def _gunicorn(*options: str) -> Callable[[int], list[str]]:
    def command(port: int) -> list[str]:
        return [
            sys.executable, "-m", "gunicorn", "--workers", "2", "--bind", f"127.0.0.1:{port}",
            "--graceful-timeout", "10", "--log-level", "warning", *options, "served_app:app",
        ]  # fmt: skip

    return command


def _uwsgi(*options: str) -> Callable[[int], list[str]]:
    def command(port: int) -> list[str]:
        return [
            str(venv_script("uwsgi")), "--http-socket", f"127.0.0.1:{port}", "--master",
            "--processes", "2", "--threads", "3", "--die-on-term", "--module", "served_app:app",
            "--virtualenv", sys.prefix, "--disable-logging", *options,
        ]  # fmt: skip

    return command


def _waitress(port: int) -> list[str]:
    return [str(venv_script("waitress-serve")), "--threads", "4", "--listen", f"127.0.0.1:{port}", "served_app:app"]


RECIPES = [
    Recipe("gunicorn-sync-preload", 2, 1, 1, signal.SIGTERM, True, _gunicorn("--worker-class", "sync", "--preload"),
           _no_module("gunicorn")),
    Recipe("gunicorn-gevent", 2, 50, 4, signal.SIGTERM, False,
           _gunicorn("--worker-class", "gevent", "--worker-connections", "50"), _no_module("gunicorn", "gevent")),
    Recipe("gunicorn-gevent-preload", 2, 50, 4, signal.SIGTERM, True,
           _gunicorn("--worker-class", "gevent", "--worker-connections", "50", "--preload"),
           _no_module("gunicorn", "gevent")),
    # The documented option: without it uWSGI forks without Python's fork hooks,
    # and a worker forked while the master's pool threads run can hang.
    Recipe("uwsgi-prefork", 2, 3, 3, signal.SIGTERM, True, _uwsgi("--py-call-uwsgi-fork-hooks"), _no_uwsgi,
           minconn=3),
    Recipe("uwsgi-lazy-apps", 2, 3, 3, signal.SIGTERM, False, _uwsgi("--lazy-apps"), _no_uwsgi),
    Recipe("waitress", 1, 4, 4, signal.SIGINT, False, _waitress, _no_module("waitress")),
]  # fmt: skip


@pytest.fixture(params=RECIPES, ids=[r.id for r in RECIPES])
def recipe(request: pytest.FixtureRequest) -> Recipe:
    r: Recipe = request.param
    reason = r.missing()
    if reason:
        pytest.skip(reason)
    return r


@pytest.fixture
def serve(
    recipe: Recipe, pg_server_dsn: str, app_name: str, tmp_path: Path
) -> Iterator[Callable[..., Any]]:
    """Start the recipe's server; it is killed (with its workers) when the test ends, whatever happens."""
    with_master = tmp_path / "master-backend"

    def start() -> Any:
        port = free_port()
        env = {
            "SERVED_DSN": pg_server_dsn,  # direct: this is about processes, not PgBouncer
            "SERVED_APP_NAME": app_name,
            "SERVED_MAXCONN": str(recipe.maxconn),
            "SERVED_MINCONN": str(recipe.minconn),
        }
        if recipe.loads_before_fork:
            env["SERVED_MASTER_BACKEND_FILE"] = str(with_master)
        return running(recipe.id, recipe.command(port), port=port, env=env, cwd=tmp_path)

    yield start


def _load_until_every_worker_answered(server: Server, recipe: Recipe, rounds: int = 10) -> Load:
    """Concurrent requests, more than the server serves at once, until every process has answered."""
    concurrency = min(2 * recipe.processes * recipe.concurrency, 100)
    total = Load()
    for _ in range(rounds):
        part = load(f"{server.url}/work?sleep=0.05", requests=2 * concurrency, concurrency=concurrency, timeout=20)
        total.answers += part.answers
        total.failures += part.failures
        total.seconds += part.seconds
        if total.failures or len(total.backends_by_worker()) >= recipe.processes:
            break
    return total


def _check_isolated(result: Load, recipe: Recipe, server: Server) -> dict[int, set[int]]:
    failed = result.failures
    assert failed == [], f"{len(failed)} failed requests, e.g. {failed[:3]}\n{server.output()}"
    seen = result.backends_by_worker()
    assert len(seen) == recipe.processes, f"expected {recipe.processes} worker(s) to answer, got {sorted(seen)}"
    for worker, backends in seen.items():
        assert len(backends) <= recipe.maxconn, f"worker {worker} used {len(backends)} sessions > maxconn"
    owners: dict[int, int] = {}
    for worker, backends in seen.items():
        for backend in backends:
            assert owners.setdefault(backend, worker) == worker, f"backend {backend} used by two workers"
    return seen


def test_every_request_served_by_its_own_process_sessions_that_recover_and_end(
    recipe: Recipe,
    serve: Callable[..., Any],
    admin: connection,
    pg_server_dsn: str,
    app_name: str,
    server_sessions: Callable[..., list[Any]],
    tmp_path: Path,
) -> None:
    master_slots = recipe.minconn if recipe.loads_before_fork else 0
    with serve() as server, SessionPeak(pg_server_dsn, app_name) as peak:
        master_backend = int((tmp_path / "master-backend").read_text()) if recipe.loads_before_fork else None

        first = _load_until_every_worker_answered(server, recipe)
        seen = _check_isolated(first, recipe, server)
        workers_backends = set().union(*seen.values())
        if master_backend is not None:
            # The workers neither used nor closed the master's connection.
            assert master_backend not in workers_backends
            assert (master_backend, "idle") in server_sessions()

        # The server ends every worker session; the pools find out at checkout, and no request fails.
        terminate(admin, *workers_backends)
        second = _load_until_every_worker_answered(server, recipe)
        again = _check_isolated(second, recipe, server)
        assert not set().union(*again.values()) & workers_backends

        assert peak.error is None
        assert peak.peak <= recipe.processes * recipe.maxconn + master_slots

        assert "without Python's fork hooks" not in server.log.read_text(errors="replace")
        assert server.stop(recipe.stop_signal) == 0, server.output()
    assert eventually(server_sessions, timeout=15) == [], "sessions left after shutdown"
