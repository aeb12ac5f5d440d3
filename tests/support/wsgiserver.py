"""Real WSGI servers for the deploy tests: start on a free port, load, always stop.

A server runs in a session (process group) of its own, so that its workers
are stopped with it: :func:`running` kills the whole group when the block
ends, whatever happened inside it. The server's output goes to a log file
that failures quote.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2

__all__ = [
    "SERVED_APP_DIR",
    "Answer",
    "Load",
    "Server",
    "SessionPeak",
    "eventually",
    "free_port",
    "load",
    "max_overlap",
    "running",
    "venv_script",
]

# The folder of served_app.py, put on the servers' PYTHONPATH (alone: support/ has an http.py).
SERVED_APP_DIR = Path(__file__).resolve().parent / "wsgi"
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# The signals that tests send servers, or that a shell may have left ignored.
_RESTORED_SIGNALS = (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGTERM)
# Looked up now: the child calls it between fork and exec, where it must not load anything.
try:
    _prctl: Callable[..., int] | None = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _prctl = None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def venv_script(name: str) -> Path | None:
    """A console script installed beside the running Python (uwsgi, waitress-serve...), if any."""
    path = Path(sys.executable).parent / name
    return path if path.exists() else None


@dataclass
class Server:
    """A started server: its master process, its URL, and its output so far."""

    name: str
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def output(self, last: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-last:]

    def stop(self, sig: signal.Signals, timeout: float = 30.0) -> int:
        """Ask the server to shut down with ``sig``; its exit code once it has (fails the test if it hangs)."""
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            # PYTHONFAULTHANDLER (see running()) makes SIGABRT write every thread's stack to the log.
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGABRT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
            raise AssertionError(
                f"{self.name} did not stop within {timeout} s of {sig.name}:\n{self.output(12000)}"
            ) from None


@contextlib.contextmanager
def running(
    name: str,
    cmd: Sequence[str],
    *,
    port: int,
    env: dict[str, str],
    cwd: Path,
    ready_timeout: float = 60.0,
) -> Iterator[Server]:
    """Start ``cmd`` (which serves HTTP on ``port``), wait until the app answers, and
    kill the server's whole process group when the block ends.

    Also when pytest itself is stopped: SIGTERM (a CI time limit) ends the
    block like Ctrl-C does, and the server's master gets SIGKILL if pytest dies.
    """
    log = cwd / f"{name}.log"
    # A server that hangs on shutdown is sent SIGABRT: its threads' stacks go to the log.
    environ = {**os.environ, "PYTHONFAULTHANDLER": "1", **env}
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SERVED_APP_DIR), environ.get("PYTHONPATH")]))
    with _sigterm_interrupts(), log.open("wb") as out:
        proc = subprocess.Popen(
            list(cmd),
            env=environ,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_child_setup,
        )
        server = Server(name, proc, f"http://127.0.0.1:{port}", log)
        try:
            _wait_until_serving(server, ready_timeout)
            yield server
        finally:
            _kill_group(proc)


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt("SIGTERM while a test server was running")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _child_setup() -> None:
    # In the child, before exec.
    # A signal ignored here stays ignored in the server, and a shell starts a
    # background job (`pytest &` in a script) with SIGINT and SIGQUIT ignored,
    # nohup with SIGHUP ignored: Python would then install no KeyboardInterrupt
    # handler, and a server stopped with SIGINT (waitress) would never stop.
    for sig in _RESTORED_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    # Linux sends the child SIGKILL when pytest's thread goes away.
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _wait_until_serving(server: Server, timeout: float) -> None:
    """Until the app answers HTTP: some servers listen before their workers have loaded it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise AssertionError(f"{server.name} exited early with {server.proc.returncode}:\n{server.output()}")
        try:
            with urllib.request.urlopen(f"{server.url}/not-a-page", timeout=2):
                return
        except urllib.error.HTTPError:
            return  # the app's 404: it is loaded
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{server.name} did not serve within {timeout} s:\n{server.output()}")


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    # The group outlives its leader when workers are orphaned: kill it even if the master is gone.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


@dataclass(frozen=True)
class Answer:
    """One request served by the app: which process and which server session, and when the query ran."""

    worker: int
    backend: int
    started: float
    ended: float


@dataclass
class Load:
    answers: list[Answer] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def backends_by_worker(self) -> dict[int, set[int]]:
        seen: dict[int, set[int]] = {}
        for a in self.answers:
            seen.setdefault(a.worker, set()).add(a.backend)
        return seen


def load(url: str, requests: int, concurrency: int, *, timeout: float = 60.0) -> Load:
    """Send ``requests`` GETs to ``url``, ``concurrency`` at a time; every outcome is kept."""
    result = Load()

    def one(_: int) -> Answer | str:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                data = json.load(response)
            return Answer(int(data["worker"]), int(data["backend"]), float(data["started"]), float(data["ended"]))
        except urllib.error.HTTPError as exc:
            return f"HTTP {exc.code}: {exc.read()[:300]!r}"
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as executor:
        for outcome in executor.map(one, range(requests)):
            if isinstance(outcome, Answer):
                result.answers.append(outcome)
            else:
                result.failures.append(outcome)
    result.seconds = time.monotonic() - started
    return result


def max_overlap(answers: Sequence[Answer]) -> int:
    """The largest number of these queries that were running at the same moment."""
    edges = sorted([(a.started, 1) for a in answers] + [(a.ended, -1) for a in answers], key=lambda e: (e[0], e[1]))
    running_now = peak = 0
    for _, step in edges:
        running_now += step
        peak = max(peak, running_now)
    return peak


class SessionPeak:
    """Counts the server sessions of one application_name in the background; keeps the largest count."""

    def __init__(self, dsn: str, app_name: str, interval: float = 0.02) -> None:
        self._dsn = dsn
        self._app_name = app_name
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="session-peak", daemon=True)
        self.peak = 0
        self.error: BaseException | None = None

    def __enter__(self) -> SessionPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        try:
            conn = psycopg2.connect(self._dsn)
        except psycopg2.Error as exc:
            self.error = exc
            return
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                while not self._stop.is_set():
                    cur.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (self._app_name,))
                    row = cur.fetchone()
                    self.peak = max(self.peak, int(row[0]) if row else 0)
                    self._stop.wait(self._interval)
        except psycopg2.Error as exc:
            self.error = exc
        finally:
            conn.close()


def eventually(probe: Callable[[], object], timeout: float, interval: float = 0.1) -> object:
    """``probe()`` until it is falsy or ``timeout`` passes; its last value."""
    deadline = time.monotonic() + timeout
    while (value := probe()) and time.monotonic() < deadline:
        time.sleep(interval)
    return value
