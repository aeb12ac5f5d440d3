"""A small fault-injecting TCP proxy for tests.

Put a :class:`TcpProxy` between a client (psycopg2) and a server (PostgreSQL) and
switch it, at any time and from any thread, between:

``pass_through()``
    forward bytes both ways (the normal state);
``drop()``
    reset every current connection at once (``SO_LINGER`` 0, so the peers get an
    RST, not a clean FIN) and reset every new one right after accepting it;
``blackhole()``
    keep every socket open but forward nothing, in either direction; new
    connections are accepted but not connected upstream.  Like a real network
    partition, bytes are *held* (not read, or read and queued) rather than lost:
    after ``pass_through()`` they are delivered, so a blackholed connection
    "heals".  To break it instead, switch to ``drop()``;
``slow(delay_s)``
    forward every chunk only ``delay_s`` after it was read, in each direction
    (so a request/response round trip takes at least ``2 * delay_s``).

Every mode switch is synchronous: when ``drop()`` returns, the connections are
already reset.  ``close()`` stops the proxy's single background thread and
closes all its sockets; it returns within ~2 s whatever the state.

Design: one thread runs a ``selectors`` loop over the listening socket, every
client/upstream socket pair and a wake-up socketpair.  All sockets are
non-blocking and ``select`` has a short timeout, so no call can block for long.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import os
import selectors
import socket
import struct
import threading
import time
from types import TracebackType
from typing import Literal

__all__ = ["Mode", "TcpProxy"]

#: The proxy's fault modes.
Mode = Literal["pass", "drop", "blackhole", "slow"]

#: TCP target as (host, port), or the path of a unix socket.
Target = tuple[str, int] | str | os.PathLike[str]

_CHUNK = 64 * 1024
# Stop reading from a side while this much is queued towards the other one.
_MAX_BUFFERED = 1024 * 1024
# Upper bound of one select(): the loop re-checks its state at least this often,
# even if a wake-up byte were lost.
_POLL_INTERVAL = 0.1
# Bound on waiting for the loop thread (mode switch acknowledged, thread joined).
_THREAD_TIMEOUT = 2.0
_ACCEPTS_PER_ROUND = 64


def _reset_close(sock: socket.socket) -> None:
    """Close ``sock`` abortively: SO_LINGER 0 makes TCP send an RST."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


def _quote_dsn_value(value: object) -> str:
    """Quote a libpq key=value DSN value if needed."""
    text = str(value)
    if text and not any(c in text for c in " '\\"):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


class _Pipe:
    """One direction of a proxied connection: chunks read, waiting to be sent."""

    def __init__(self) -> None:
        # (due time on the monotonic clock, bytes); sent in order, none before due.
        self.queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self.buffered = 0
        self.eof = False  # the source side has sent EOF
        self.shut = False  # ... and it was passed on: shutdown(SHUT_WR) done on the destination

    def due(self, now: float) -> bool:
        return bool(self.queue) and self.queue[0][0] <= now


class _Conn:
    """A client connection and (once connected) its upstream connection."""

    def __init__(self, client: socket.socket) -> None:
        self.client = client
        self.upstream: socket.socket | None = None
        self.connecting = False  # non-blocking connect to upstream in progress
        self.up = _Pipe()  # client -> upstream
        self.down = _Pipe()  # upstream -> client
        self.closed = False


class TcpProxy:
    """TCP proxy on ``127.0.0.1:<free port>`` that forwards to ``target``.

    ``target`` is ``(host, port)`` or a unix socket path (``str``/``Path``).  The
    proxy starts in ``"pass"`` mode and runs until :meth:`close`.  Mode methods
    and :meth:`close` may be called from any thread.
    """

    def __init__(self, target: Target, *, listen_host: str = "127.0.0.1", listen_port: int = 0) -> None:
        if isinstance(target, tuple):
            host, port = target
            family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
            self._target_family: socket.AddressFamily = family
            self._target_addr: tuple[str, int] | str = (str(sockaddr[0]), int(sockaddr[1]))
            self._target: tuple[str, int] | str = (host, port)
        else:
            self._target_family = socket.AF_UNIX
            self._target_addr = self._target = os.fspath(target)

        # State shared with the loop thread; guarded by _cond.
        self._cond = threading.Condition()
        self._mode: Mode = "pass"
        self._delay = 0.0
        self._generation = 0  # bumped by every mode switch ...
        self._applied = 0  # ... and acknowledged by the loop once in effect
        self._closing = False
        self._stopped = False
        self._error: BaseException | None = None

        # Only touched by the loop thread (except the counters, read anywhere).
        self._conns: set[_Conn] = set()
        #: Number of client connections accepted so far (in any mode).
        self.accepted = 0
        #: Bytes read from clients (towards the server) and from the server
        #: (towards clients), in any mode: they tell whether a round trip happened.
        self.bytes_up = 0
        self.bytes_down = 0

        self._listener = socket.create_server((listen_host, listen_port), backlog=128)
        self._listener.setblocking(False)
        self._host, self._port = self._listener.getsockname()[:2]
        # Wake-up channel so mode switches / close take effect immediately.
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._listener, selectors.EVENT_READ, None)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)

        self._thread = threading.Thread(target=self._loop, name=f"TcpProxy-{self._port}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ public API

    @property
    def host(self) -> str:
        """Address the proxy listens on."""
        return str(self._host)

    @property
    def port(self) -> int:
        """Port the proxy listens on."""
        return int(self._port)

    @property
    def target(self) -> tuple[str, int] | str:
        """Where connections are forwarded: ``(host, port)`` or a socket path."""
        return self._target

    @property
    def mode(self) -> Mode:
        """Current mode: "pass", "drop", "blackhole" or "slow"."""
        with self._cond:
            return self._mode

    @property
    def active_connections(self) -> int:
        """Number of client connections currently open through the proxy."""
        return len(self._conns)

    def dsn(self, **params: object) -> str:
        """libpq key=value DSN pointing at the proxy, plus ``params``.

        E.g. ``proxy.dsn(user="postgres", dbname="postgres", connect_timeout=2)``.
        """
        parts = [f"host={self.host}", f"port={self.port}"]
        parts += [f"{key}={_quote_dsn_value(value)}" for key, value in params.items()]
        return " ".join(parts)

    def pass_through(self) -> None:
        """Forward normally (also delivers anything held while blackholed)."""
        self._set_mode("pass")

    def drop(self) -> None:
        """Reset all current connections and every new one until the mode changes."""
        self._set_mode("drop")

    def blackhole(self) -> None:
        """Keep connections open but forward nothing, either way."""
        self._set_mode("blackhole")

    def slow(self, delay_s: float) -> None:
        """Forward each chunk ``delay_s`` seconds after it arrives (each direction)."""
        if delay_s < 0:
            raise ValueError("delay_s must be >= 0")
        self._set_mode("slow", delay_s)

    def close(self) -> None:
        """Stop the proxy: close every socket and join the thread (bounded ~2 s).

        Idempotent.
        """
        with self._cond:
            self._closing = True
        self._wake()
        self._thread.join(_THREAD_TIMEOUT)
        if not self._thread.is_alive():
            # The loop closed everything else on its way out.
            with contextlib.suppress(OSError):
                self._wake_w.close()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TcpProxy({self.host}:{self.port} -> {self._target!r}, mode={self.mode})"

    # ------------------------------------------------------------------ mode switching

    def _set_mode(self, mode: Mode, delay: float = 0.0) -> None:
        """Switch mode and wait (bounded) until the loop thread has applied it."""
        with self._cond:
            if self._closing or self._stopped:
                raise RuntimeError(f"{self!r} is closed") from self._error
            self._mode = mode
            self._delay = delay
            self._generation += 1
            generation = self._generation
        self._wake()
        with self._cond:
            done = self._cond.wait_for(lambda: self._applied >= generation or self._stopped, _THREAD_TIMEOUT)
            if self._stopped and self._applied < generation:
                raise RuntimeError(f"{self!r} stopped") from self._error
        if not done:
            raise TimeoutError(f"{self!r}: mode switch to {mode!r} not applied within {_THREAD_TIMEOUT}s")

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full (already woken) or closed
            self._wake_w.send(b"x")

    # ------------------------------------------------------------------ loop thread

    def _loop(self) -> None:
        try:
            while True:
                with self._cond:
                    if self._closing:
                        return
                    mode, delay, generation = self._mode, self._delay, self._generation
                forwarding = mode in ("pass", "slow")
                if mode == "drop":
                    for conn in list(self._conns):
                        self._kill(conn)
                elif forwarding:
                    # Connections accepted while blackholed get connected now.
                    for conn in list(self._conns):
                        if conn.upstream is None:
                            self._connect_upstream(conn)
                timeout = self._update_interest(forwarding)
                with self._cond:  # the mode is in effect: let _set_mode return
                    self._applied = max(self._applied, generation)
                    self._cond.notify_all()

                for key, events in self._sel.select(timeout):
                    if key.fileobj is self._wake_r:
                        self._drain_wakeups()
                    elif key.fileobj is self._listener:
                        self._accept(mode)
                    else:
                        conn, side = key.data
                        self._service(conn, side, events, forwarding, delay if mode == "slow" else 0.0)
        except BaseException as exc:  # pragma: no cover - reported via _set_mode
            self._error = exc
            raise
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        """Close every socket the loop owns (runs on the loop thread, at exit)."""
        for conn in list(self._conns):
            self._kill(conn)
        with contextlib.suppress(OSError):
            self._sel.close()
        with contextlib.suppress(OSError):
            self._listener.close()
        with contextlib.suppress(OSError):
            self._wake_r.close()
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def _drain_wakeups(self) -> None:
        with contextlib.suppress(OSError):
            while self._wake_r.recv(4096):
                pass

    def _accept(self, mode: Mode) -> None:
        for _ in range(_ACCEPTS_PER_ROUND):
            try:
                client, _addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. ECONNABORTED: the client gave up already
                continue
            self.accepted += 1
            if mode == "drop":
                _reset_close(client)
                continue
            client.setblocking(False)
            with contextlib.suppress(OSError):
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Conn(client)
            self._conns.add(conn)
            if mode in ("pass", "slow"):
                self._connect_upstream(conn)

    def _connect_upstream(self, conn: _Conn) -> None:
        """Start a non-blocking connect to the target; reset the client on failure."""
        sock = socket.socket(self._target_family, socket.SOCK_STREAM)
        sock.setblocking(False)
        err = sock.connect_ex(self._target_addr)
        if err not in (0, errno.EINPROGRESS, errno.EAGAIN, errno.EWOULDBLOCK):
            sock.close()  # e.g. ECONNREFUSED: the server is down
            self._kill(conn)
            return
        if self._target_family != socket.AF_UNIX:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.upstream = sock
        conn.connecting = err != 0

    def _update_interest(self, forwarding: bool) -> float:
        """(Re)register every socket for what it should wait on; return select timeout.

        While not forwarding, connection sockets wait on nothing at all, which
        is what holds their data back in "blackhole" mode.
        """
        now = time.monotonic()
        timeout = _POLL_INTERVAL
        for conn in self._conns:
            client_events = 0
            upstream_events = 0
            if forwarding:
                if not conn.up.eof and conn.up.buffered < _MAX_BUFFERED:
                    client_events |= selectors.EVENT_READ
                if conn.down.due(now):
                    client_events |= selectors.EVENT_WRITE
                if conn.connecting:
                    upstream_events = selectors.EVENT_WRITE
                elif conn.upstream is not None:
                    if not conn.down.eof and conn.down.buffered < _MAX_BUFFERED:
                        upstream_events |= selectors.EVENT_READ
                    if conn.up.due(now):
                        upstream_events |= selectors.EVENT_WRITE
                # Wake up in time for the next chunk that is not due yet ("slow").
                for pipe in (conn.up, conn.down):
                    if pipe.queue and not pipe.due(now):
                        timeout = min(timeout, pipe.queue[0][0] - now)
            self._set_interest(conn.client, client_events, (conn, "client"))
            if conn.upstream is not None:
                self._set_interest(conn.upstream, upstream_events, (conn, "upstream"))
        return max(timeout, 0.0)

    def _set_interest(self, sock: socket.socket, events: int, data: tuple[_Conn, str]) -> None:
        try:
            key: selectors.SelectorKey | None = self._sel.get_key(sock)
        except KeyError:
            key = None
        if events == 0:
            if key is not None:
                self._sel.unregister(sock)
        elif key is None:
            self._sel.register(sock, events, data)
        elif key.events != events:
            self._sel.modify(sock, events, data)

    def _service(self, conn: _Conn, side: str, events: int, forwarding: bool, delay: float) -> None:
        """Handle readiness of one side of ``conn``."""
        if conn.closed or not forwarding:
            return
        if side == "client":
            sock, src_pipe, dst_pipe = conn.client, conn.up, conn.down
        else:
            assert conn.upstream is not None
            sock, src_pipe, dst_pipe = conn.upstream, conn.down, conn.up
        try:
            if side == "upstream" and conn.connecting:
                if events & selectors.EVENT_WRITE:
                    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise OSError(err, os.strerror(err))
                    conn.connecting = False
                return
            if events & selectors.EVENT_READ:
                data = sock.recv(_CHUNK)
                if data:
                    if side == "client":
                        self.bytes_up += len(data)
                    else:
                        self.bytes_down += len(data)
                    src_pipe.queue.append((time.monotonic() + delay, data))
                    src_pipe.buffered += len(data)
                else:
                    src_pipe.eof = True
            if events & selectors.EVENT_WRITE:
                self._send_due(sock, dst_pipe)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:  # reset, broken pipe, refused...: pass the failure on
            self._kill(conn)
            return
        self._propagate_eof(conn)

    @staticmethod
    def _send_due(sock: socket.socket, pipe: _Pipe) -> None:
        """Send queued chunks that are due, in order, until the socket is full."""
        now = time.monotonic()
        while pipe.due(now):
            due, data = pipe.queue[0]
            sent = sock.send(data)  # BlockingIOError handled by the caller
            pipe.buffered -= sent
            if sent < len(data):
                pipe.queue[0] = (due, data[sent:])
                return
            pipe.queue.popleft()

    def _propagate_eof(self, conn: _Conn) -> None:
        """Pass a half-close on once everything before it was sent; close when both done."""
        if conn.up.eof and conn.upstream is None:
            self._close(conn)  # client left before we ever connected upstream
            return
        for pipe, dst in ((conn.up, conn.upstream), (conn.down, conn.client)):
            if pipe.eof and not pipe.queue and not pipe.shut and dst is not None and not conn.connecting:
                pipe.shut = True
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)
        if conn.up.shut and conn.down.shut:
            self._close(conn)

    def _forget(self, conn: _Conn) -> list[socket.socket]:
        """Unregister ``conn``'s sockets and drop it; return the sockets."""
        conn.closed = True
        self._conns.discard(conn)
        socks = [s for s in (conn.client, conn.upstream) if s is not None]
        for sock in socks:
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(sock)
        return socks

    def _kill(self, conn: _Conn) -> None:
        """Abort ``conn``: RST both sides."""
        for sock in self._forget(conn):
            _reset_close(sock)

    def _close(self, conn: _Conn) -> None:
        """Close ``conn`` cleanly (both directions already shut down)."""
        for sock in self._forget(conn):
            with contextlib.suppress(OSError):
                sock.close()
