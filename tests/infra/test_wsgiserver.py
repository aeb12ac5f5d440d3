"""Tests for support.wsgiserver: a server the deploy tests start is always stopped, workers included."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest
from support.wsgiserver import Answer, free_port, max_overlap, running

# A "server" whose master forks a worker, as gunicorn and uWSGI do; both answer HTTP.
FORKING_SERVER = """
    import http.server, os, sys

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(404)
            self.end_headers()

    server = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    worker = os.fork()
    if worker:
        with open("pids", "w") as f:
            f.write(f"{os.getpid()} {worker}")
    server.serve_forever()
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0): it has exited, its parent has not reaped it yet.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_a_failing_test_still_stops_the_server_and_its_workers(tmp_path: Path) -> None:
    script = tmp_path / "server.py"
    script.write_text(textwrap.dedent(FORKING_SERVER))
    port = free_port()
    with pytest.raises(RuntimeError, match="the test failed"), running(
        "forking", [sys.executable, str(script), str(port)], port=port, env={}, cwd=tmp_path
    ):
        deadline = time.monotonic() + 10
        while not (tmp_path / "pids").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        master, worker = map(int, (tmp_path / "pids").read_text().split())
        assert _alive(master) and _alive(worker)
        raise RuntimeError("the test failed")
    deadline = time.monotonic() + 10
    while (_alive(master) or _alive(worker)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(master) and not _alive(worker)


# A server that stops on Ctrl-C like waitress does: Python's KeyboardInterrupt, then exit 0.
STOPS_ON_SIGINT = """
    import http.server, sys

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(404)
            self.end_headers()

    server = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        sys.exit(0)
"""


def test_a_server_stops_on_sigint_when_the_tests_run_with_sigint_ignored(tmp_path: Path) -> None:
    # A shell starts a background job (`pytest ... &` in a script, CI steps
    # alike) with SIGINT and SIGQUIT ignored, and an ignored signal stays
    # ignored across fork and exec: Python then installs no KeyboardInterrupt
    # handler, and a server stopped with SIGINT (waitress) would never stop.
    script = tmp_path / "server.py"
    script.write_text(textwrap.dedent(STOPS_ON_SIGINT))
    port = free_port()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with running("sigint", [sys.executable, str(script), str(port)], port=port, env={}, cwd=tmp_path) as server:
            assert server.stop(signal.SIGINT, timeout=20) == 0
    finally:
        signal.signal(signal.SIGINT, previous)


def test_max_overlap_counts_queries_running_at_the_same_moment() -> None:
    def answer(started: float, ended: float) -> Answer:
        return Answer(worker=1, backend=1, started=started, ended=ended)

    assert max_overlap([]) == 0
    assert max_overlap([answer(0, 1), answer(1, 2), answer(2, 3)]) == 1  # one after the other
    assert max_overlap([answer(0, 3), answer(1, 2), answer(1.5, 4)]) == 3
    assert max_overlap([answer(0, 1), answer(0.5, 2), answer(3, 4)]) == 2
