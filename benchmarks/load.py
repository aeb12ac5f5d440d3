"""Load generators: wrk for throughput, a small Python client for the restart scenario."""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

_LUA = Path(__file__).resolve().parent / "wrk_report.lua"


def wrk_path() -> str | None:
    return shutil.which("wrk")


@dataclass
class WrkResult:
    requests: int
    seconds: float
    failed: int  # non-2xx/3xx responses + socket errors (connect, read, write, timeout)
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return (self.requests - self.failed) / self.seconds if self.seconds else 0.0


def run_wrk(url: str, connections: int, seconds: float, threads: int = 2, timeout: float = 15.0) -> WrkResult:
    """Load ``url`` with ``connections`` keep-alive connections for ``seconds``."""
    threads = max(1, min(threads, connections))
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        f"--timeout={timeout:g}s",
        "-s",
        str(_LUA),
        url,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + timeout + 30)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no summary: {out.stdout}\n{out.stderr}")
    s = json.loads(line.split(" ", 1)[1])
    failed = s["connect"] + s["read"] + s["write"] + s["status"] + s["timeout"]
    return WrkResult(
        requests=s["requests"],
        seconds=s["duration_us"] / 1e6,
        failed=failed,
        p50_ms=s["p50_us"] / 1000,
        p99_ms=s["p99_us"] / 1000,
    )


@dataclass
class Outcome:
    end: float  # time.monotonic() when the response (or error) arrived
    ok: bool


def timed_load(
    host: str,
    port: int,
    path: str,
    connections: int,
    seconds: float,
    during: Callable[[threading.Event], None],
) -> list[Outcome]:
    """Send requests on ``connections`` keep-alive connections for ``seconds``,
    calling ``during(go)`` from this thread meanwhile; return every request's outcome.

    Clients send only while the ``go`` event is set (it starts set), so
    ``during`` can pause the load. wrk cannot time-stamp single responses,
    which the restart scenario needs.
    """
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    stop = threading.Event()
    go = threading.Event()
    go.set()

    def client() -> None:
        conn: http.client.HTTPConnection | None = None
        while not stop.is_set():
            if not go.is_set():
                # Paused: close the keep-alive connection, which the server
                # would time out anyway (that would be the client's failure,
                # not the database's).
                if conn is not None:
                    conn.close()
                    conn = None
                go.wait(0.1)
                continue
            ok = False
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(host, port, timeout=30)
                conn.request("GET", path)
                resp = conn.getresponse()
                resp.read()
                ok = 200 <= resp.status < 300
                if resp.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException):
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.01)  # socket error: do not spin
            with lock:
                outcomes.append(Outcome(time.monotonic(), ok))
        if conn is not None:
            conn.close()

    workers = [threading.Thread(target=client, daemon=True) for _ in range(connections)]
    started = time.monotonic()
    for w in workers:
        w.start()
    during(go)
    go.set()
    time.sleep(max(0.0, seconds - (time.monotonic() - started)))
    stop.set()
    for w in workers:
        w.join(timeout=60)
    return outcomes
