"""A throwaway PgBouncer in front of a test PostgreSQL server.

Uses the ``pgbouncer`` binary of the machine (Debian package ``pgbouncer``);
:func:`pgbouncer_binary` returns None when it is not installed, so tests can skip.
Typical use::

    bouncer = PgBouncer.start(upstream_dsn, tmp_path)  # transaction pooling
    conn = psycopg2.connect(bouncer.dsn())            # 127.0.0.1:<bouncer.port>
    bouncer.show("POOLS")                              # the admin console, as dicts
    bouncer.stop()

The upstream may be a unix socket (the embedded server) or TCP. Clients are
let in without a password (``auth_type = any``, 127.0.0.1 only); PgBouncer logs
in to the server as the upstream DSN's user, with its password if it has one.

PgBouncer refuses to run as root: as root it is started with ``-u`` as the
user that owns the upstream socket directory (the embedded server's user), or
``pgserver``, created when missing.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
from psycopg2.extensions import connection, make_dsn, parse_dsn

__all__ = ["PgBouncer", "PgBouncerError", "pgbouncer_binary"]

LISTEN_HOST = "127.0.0.1"
_DEFAULT_USER = "pgserver"


class PgBouncerError(RuntimeError):
    """PgBouncer did not start or stop as expected."""


def pgbouncer_binary() -> str | None:
    """The pgbouncer executable, or None when it is not installed."""
    return shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/local/sbin/pgbouncer") if os.access(p, os.X_OK)), None
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LISTEN_HOST, 0))
        return int(sock.getsockname()[1])


def _ini_value(value: object) -> str:
    """A value inside a [databases] connection string (single-quoted when needed)."""
    text = str(value)
    if text and all(c.isalnum() or c in "._-/" for c in text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


class PgBouncer:
    """One running pgbouncer process; see the module docstring."""

    def __init__(self, upstream_dsn: str, base_dir: Path, settings: dict[str, Any]) -> None:
        self.upstream = parse_dsn(upstream_dsn)
        self.dbname = self.upstream.get("dbname") or self.upstream.get("user") or "postgres"
        self.dir = Path(tempfile.mkdtemp(prefix="pgbouncer-", dir=base_dir))
        self.port = _free_port()
        self.settings = settings
        self.database_params: dict[str, Any] = {}
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    def start(
        cls,
        upstream_dsn: str,
        base_dir: Path | None = None,
        *,
        pool_mode: str = "transaction",
        default_pool_size: int = 10,
        database_params: dict[str, Any] | None = None,
        **settings: Any,
    ) -> PgBouncer:
        """Write a config and start pgbouncer; return once it accepts connections.

        ``settings`` are extra ``[pgbouncer]`` lines (e.g. ``ignore_startup_parameters="options"``);
        ``database_params`` extra parameters of the database's line (e.g. ``connect_query``).
        """
        binary = pgbouncer_binary()
        if binary is None:
            raise PgBouncerError("pgbouncer is not installed (apt-get install pgbouncer)")
        all_settings = {"pool_mode": pool_mode, "default_pool_size": default_pool_size, **settings}
        bouncer = cls(upstream_dsn, Path(base_dir or tempfile.gettempdir()), all_settings)
        bouncer.database_params = dict(database_params or {})
        bouncer._launch(binary)
        return bouncer

    # -- connecting ------------------------------------------------------

    def dsn(self, **params: Any) -> str:
        """A DSN to the upstream database through this pgbouncer (extra libpq params allowed)."""
        base: dict[str, Any] = {
            "host": LISTEN_HOST,
            "port": self.port,
            "dbname": self.dbname,
            "user": self.upstream.get("user") or "postgres",
        }
        base.update(params)
        return str(make_dsn(**base))

    @property
    def admin_dsn(self) -> str:
        """The admin console (database ``pgbouncer``)."""
        return self.dsn(dbname="pgbouncer")

    @contextlib.contextmanager
    def admin(self) -> Iterator[connection]:
        conn = psycopg2.connect(self.admin_dsn)
        conn.autocommit = True  # the console knows no transactions
        try:
            yield conn
        finally:
            conn.close()

    def show(self, what: str) -> list[dict[str, Any]]:
        """``SHOW <what>`` on the admin console, as a list of dicts."""
        with self.admin() as conn, conn.cursor() as cur:
            cur.execute(f"SHOW {what}")
            names = [d.name for d in cur.description or ()]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def pool_row(self) -> dict[str, Any]:
        """The ``SHOW POOLS`` row of the upstream database."""
        rows = [r for r in self.show("POOLS") if r["database"] == self.dbname]
        if len(rows) != 1:
            raise PgBouncerError(f"expected one pool for {self.dbname!r}, got {rows!r}")
        return rows[0]

    def servers(self) -> list[dict[str, Any]]:
        """``SHOW SERVERS`` rows of the upstream database."""
        return [r for r in self.show("SERVERS") if r["database"] == self.dbname]

    # -- process ---------------------------------------------------------

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop pgbouncer (closing its server connections). Idempotent."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # "safe shutdown": close everything now
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, max_chars: int = 4000) -> str:
        try:
            return (self.dir / "pgbouncer.log").read_text(errors="replace")[-max_chars:]
        except OSError:
            return ""

    def __enter__(self) -> PgBouncer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<PgBouncer {LISTEN_HOST}:{self.port} {self.settings.get('pool_mode')} {state}>"

    def _run_as(self) -> str | None:
        """The user to drop to, when root (pgbouncer will not run as root)."""
        if os.geteuid() != 0:
            return None
        host = self.upstream.get("host", "")
        if host.startswith("/") and os.path.isdir(host):
            # The embedded server's socket directory is private to its owner.
            owner = pwd.getpwuid(os.stat(host).st_uid).pw_name
            if owner != "root":
                return owner
        try:
            pwd.getpwnam(_DEFAULT_USER)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", _DEFAULT_USER], check=True)
        return _DEFAULT_USER

    def _config(self) -> str:
        server = {k: v for k, v in self.upstream.items() if k in ("host", "port", "user", "password", "dbname")}
        server.setdefault("dbname", self.dbname)
        server.setdefault("user", self.upstream.get("user") or "postgres")
        server.update(self.database_params)
        db_line = " ".join(f"{k}={_ini_value(v)}" for k, v in server.items())
        lines = [
            "[databases]",
            f"{self.dbname} = {db_line}",
            "[pgbouncer]",
            f"listen_addr = {LISTEN_HOST}",
            f"listen_port = {self.port}",
            "unix_socket_dir =",
            # Tests only, on 127.0.0.1: clients need no password; the server
            # login uses the user (and password) of the [databases] line.
            "auth_type = any",
            "max_client_conn = 200",
            "server_login_retry = 1",
            f"logfile = {self.dir / 'pgbouncer.log'}",
            f"pidfile = {self.dir / 'pgbouncer.pid'}",
        ]
        lines += [f"{k} = {v}" for k, v in self.settings.items()]
        return "\n".join(lines) + "\n"

    def _launch(self, binary: str, timeout: float = 15.0) -> None:
        config = self.dir / "pgbouncer.ini"
        config.write_text(self._config())
        config.chmod(0o600)  # it may hold the upstream password
        user = self._run_as()
        cmd = [binary, "-q", str(config)]
        if user is not None:
            info = pwd.getpwnam(user)
            os.chown(self.dir, info.pw_uid, info.pw_gid)
            os.chown(config, info.pw_uid, info.pw_gid)
            self.dir.chmod(0o700)
            _grant_traverse(self.dir.parent)
            cmd[1:1] = ["-u", user]
        self.process = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                raise PgBouncerError(f"pgbouncer exited with {self.process.returncode}: {err}\n{self.log_tail()}")
            try:
                with socket.create_connection((LISTEN_HOST, self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise PgBouncerError(f"pgbouncer did not listen on {LISTEN_HOST}:{self.port} within {timeout} s")


def _grant_traverse(path: Path) -> None:
    """Let the unprivileged user reach ``path`` (pytest's tmp dirs are 0700)."""
    for p in [path, *path.parents]:
        with contextlib.suppress(OSError):
            mode = p.stat().st_mode
            if not mode & 0o001:
                p.chmod(mode | 0o001)
