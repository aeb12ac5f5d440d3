"""gunicorn servers for the variant apps, and the CPU time their workers use."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil

_ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    """One gunicorn (gthread workers) serving one variant app on 127.0.0.1."""

    def __init__(self, module: str, dsn: str, maxconn: int, threads: int, workers: int, log_dir: Path) -> None:
        self.module = module
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, BENCH_DSN=dsn, BENCH_MAXCONN=str(maxconn))
        log_dir.mkdir(parents=True, exist_ok=True)
        # Kept open for the server's life; closed in stop().
        self._log = open(log_dir / f"{module.rsplit('.', 1)[-1]}-{self.port}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "--worker-class",
                "gthread",
                "--workers",
                str(workers),
                "--threads",
                str(threads),
                "--bind",
                f"127.0.0.1:{self.port}",
                # Under overload a request may wait for a connection; do not let
                # the worker be killed as stuck meanwhile.
                "--timeout",
                "120",
                "--backlog",
                "2048",
                "--log-level",
                "warning",
                f"{module}:create_app()",
            ],
            cwd=_ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.workers = workers

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until every worker is up and ``/db`` answers 200."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn for {self.module} exited; see its log {self._log.name}")
            if len(self.worker_pids()) == self.workers:
                try:
                    with urllib.request.urlopen(self.url + "/db", timeout=5) as resp:
                        if resp.status == 200:
                            return
                except OSError:
                    pass
            time.sleep(0.1)
        raise RuntimeError(f"gunicorn for {self.module} not ready after {timeout:g} s")

    def worker_pids(self) -> list[int]:
        """The worker processes (children of the gunicorn master)."""
        try:
            return [p.pid for p in psutil.Process(self.proc.pid).children()]
        except psutil.Error:
            return []

    def cpu_seconds(self) -> float:
        """User + system CPU time of all workers so far (/proc/<pid>/stat via psutil)."""
        total = 0.0
        for pid in self.worker_pids():
            try:
                times = psutil.Process(pid).cpu_times()
            except psutil.Error:
                continue
            total += times.user + times.system
        return total

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
