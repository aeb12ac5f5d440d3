"""Tests of tests/support/netns.py: a path that really goes silent, and comes back;
namespaces and links cleaned up, also after a run that was killed.

Every socket operation has a timeout, so a test that meets a hang fails instead.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
from support.netns import NetNamespace, NetnsUnavailable, remove_leftovers
from support.pgcluster import private_cluster

SUPPORT = Path(__file__).resolve().parents[1]
ECHO_PORT = 7007

# An echo server: answers every line it gets.
ECHO_SERVER = textwrap.dedent(
    """
    import socket, sys, threading
    server = socket.create_server((sys.argv[1], int(sys.argv[2])))
    print("ready", flush=True)
    def serve(conn):
        with conn:
            while data := conn.recv(1024):
                conn.sendall(data)
    while True:
        conn, _ = server.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()
    """
)


@pytest.fixture
def netns() -> Iterator[NetNamespace]:
    try:
        ns = NetNamespace.create()
    except NetnsUnavailable as exc:
        pytest.skip(f"cannot make a network namespace here: {exc}")
    with ns:
        yield ns


@pytest.fixture
def echo(netns: NetNamespace) -> Iterator[tuple[str, int]]:
    """An echo server inside the namespace."""
    server = subprocess.Popen(
        netns.command([sys.executable, "-c", ECHO_SERVER, netns.address, str(ECHO_PORT)]),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    assert server.stdout.readline().strip() == "ready"
    yield netns.address, ECHO_PORT
    server.kill()
    server.wait(5)


def exchange(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    return sock.recv(1024)


def test_the_path_goes_silent_and_comes_back(netns: NetNamespace, echo: tuple[str, int]) -> None:
    with socket.create_connection(echo, timeout=5) as sock:
        assert exchange(sock, b"one") == b"one"
        assert netns.connections() == 1

        netns.cut()
        sock.settimeout(1.5)
        sock.sendall(b"two")  # taken by the kernel: nothing says the path is gone
        with pytest.raises(TimeoutError):  # not a reset, not an error: silence
            sock.recv(1024)
        # A new connection is neither refused nor answered by anyone else.
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            socket.create_connection(echo, timeout=1.5)
        assert time.monotonic() - started >= 1.4

        netns.restore()
        # TCP delivers what it held once the path carries packets again.
        sock.settimeout(10)
        assert sock.recv(1024) == b"two"
        assert exchange(sock, b"three") == b"three"
    with socket.create_connection(echo, timeout=5) as again:
        assert exchange(again, b"four") == b"four"


def test_connections_counts_what_the_kernel_still_holds(netns: NetNamespace, echo: tuple[str, int]) -> None:
    with socket.create_connection(echo, timeout=5) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 1)
        assert exchange(sock, b"x") == b"x"
        assert netns.connections() == 1
        netns.cut()
        deadline = time.monotonic() + 10
        while netns.connections() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert netns.connections() == 0  # given up by keepalive, though the socket is still open
        sock.settimeout(1)
        with pytest.raises(OSError):
            sock.recv(1)


def test_a_cluster_inside_answers_over_the_path_and_on_its_socket_while_cut(netns: NetNamespace) -> None:
    with private_cluster("netns-infra", host=netns.address, launcher=netns.command) as pg:
        assert pg.host == netns.address
        with psycopg2.connect(pg.dsn, connect_timeout=5) as conn, conn.cursor() as cur:
            cur.execute("SELECT inet_server_addr()::text")
            assert cur.fetchone() == (f"{netns.address}/32",)
        conn.close()
        netns.cut()
        with pytest.raises(psycopg2.OperationalError, match="timeout expired"):
            psycopg2.connect(pg.dsn, connect_timeout=2)
        socket_conn = psycopg2.connect(pg.socket_dsn, connect_timeout=5)
        socket_conn.close()
        netns.restore()
        psycopg2.connect(pg.dsn, connect_timeout=5).close()


def test_destroy_removes_the_namespace_and_its_links(netns: NetNamespace) -> None:
    links = [netns.host_link, netns.sink_link]
    netns.cut()
    netns.destroy()
    netns.destroy()  # idempotent
    assert netns.name not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    shown = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    assert not any(link in shown for link in links)


def test_leftovers_of_a_killed_run_are_removed_and_a_live_runs_are_not(netns: NetNamespace) -> None:
    # A run killed with a namespace and a process inside it still there.
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import os, signal, subprocess, sys
                sys.path.insert(0, {str(SUPPORT)!r})
                from support.netns import NetNamespace
                ns = NetNamespace.create()
                subprocess.Popen(ns.command(["sleep", "600"]), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                print(ns.name, ns.host_link, ns.sink_link, flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
                """
            ),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    name, host_link, sink_link = killed.stdout.split()
    assert name in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    sleeper = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
    assert len(sleeper) == 1

    removed = remove_leftovers()
    assert name in removed
    assert netns.name not in removed  # this run's namespace is alive
    assert name not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    shown = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    assert host_link not in shown and sink_link not in shown  # gone with the ends inside the namespace
    deadline = time.monotonic() + 5
    while running(int(sleeper[0])) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running(int(sleeper[0])), "the process left inside was not killed"
    assert netns.connections() == 0  # still usable
    netns.restore()


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan may never be reaped in a container)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")
