"""Prototypes of single changes to the engine, measured against it: what each change would gain.

Each prototype is a private copy of ``flask_pgpool._pool`` (loaded again
under another name, so the real engine is untouched) with one thing changed.
They are written against the engine as it is before its rewrite into several
modules: once it has changed, :func:`prototypes` returns nothing and says why.
"""

from __future__ import annotations

import _thread
import importlib.util
import statistics
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

from .bench import _rotated, _spread
from .contenders import CONTENDERS, OpenPool
from .pairs import Sample, run_pairs

__all__ = ["prototypes", "run_whatif"]

_NEEDED = ("_Waiter", "socket_state", "SocketState", "session_of", "restore_session", "bounded", "dsnlib", "_log")
_METHODS = ("_locked", "_notify", "_reset", "_wait_time", "_acquire", "_give_back")


def _engine_copy(tag: str) -> ModuleType | None:
    spec = importlib.util.find_spec("flask_pgpool._pool")
    if spec is None or spec.origin is None:
        return None
    copy = importlib.util.spec_from_file_location(f"flask_pgpool._pool_whatif_{tag}", spec.origin)
    if copy is None or copy.loader is None:
        return None
    module = importlib.util.module_from_spec(copy)
    sys.modules[copy.name] = module  # dataclasses look their module up there
    copy.loader.exec_module(module)
    pool_class = getattr(module, "ConnectionPool", None)
    if pool_class is None or any(not hasattr(module, n) for n in _NEEDED):
        return None
    if any(not hasattr(pool_class, m) for m in _METHODS):
        return None
    return module


class _LockWaiter:
    """A waiter whose wake-up is one plain lock, held while nothing is handed over.

    Stands in for the engine's waiter (an Event: a Condition, its lock, a
    deque and a lock per wait). ``set`` runs under the pool's lock, so two
    never race; ``wait`` consumes the wake-up, so ``clear`` has nothing to do.
    """

    __slots__ = ("_lock", "conn", "event")

    def __init__(self) -> None:
        self._lock = _thread.allocate_lock()
        self._lock.acquire()
        self.conn: Any = None
        self.event = self

    def set(self) -> None:
        if self._lock.locked():
            self._lock.release()

    def wait(self, timeout: float) -> bool:
        return bool(self._lock.acquire(True, timeout))

    def clear(self) -> None:
        pass


def _no_getpid(module: ModuleType) -> None:
    # Fork is caught by the at-fork hook alone.
    module.ConnectionPool._locked = lambda self: self._lock


def _no_notify(module: ModuleType) -> None:
    original = module.ConnectionPool._notify

    def notify(self: Any, event: str, seconds: float) -> None:
        if self._observers:
            original(self, event, seconds)

    module.ConnectionPool._notify = notify


def _no_return_poll(module: ModuleType) -> None:
    """The return path without its socket poll (the checkout still polls)."""
    from psycopg2.extensions import TRANSACTION_STATUS_IDLE

    original = module.ConnectionPool._reset

    def reset(self: Any, conn: Any, slot: Any) -> bool:
        status = conn.get_transaction_status() if not conn.closed else None
        if status != TRANSACTION_STATUS_IDLE:  # a rollback or a discard: the engine's own path
            return bool(original(self, conn, slot))
        if module.session_of(conn) != slot.session:
            module.restore_session(conn, slot.session)
        return bool(module.time.monotonic() < slot.expires)

    module.ConnectionPool._reset = reset


def _poll_keeping_gil(module: ModuleType) -> None:
    """The socket check's poll(0) made through ctypes.PyDLL, which keeps the GIL (ctypes adds its own cost)."""
    import ctypes
    import select

    from .units import _libc_poll_keeping_gil

    libc_poll = _libc_poll_keeping_gil()
    if libc_poll is None:
        return
    original = module.socket_state
    events = select.POLLIN | select.POLLPRI
    structs: dict[int, tuple[Any, int]] = {}

    def socket_state(conn: Any, poller: Any = None) -> Any:
        fd = conn.fileno()
        entry = structs.get(fd)
        if entry is None:
            pollfd = (ctypes.c_int * 2)(fd, events)  # struct pollfd: fd; events and revents in one int
            entry = structs[fd] = (pollfd, ctypes.addressof(pollfd))
        if libc_poll(entry[1], 1, 0) == 0 and not conn.closed:
            return module.SocketState.QUIET
        return original(conn, poller)  # something to read, or closed: the engine's own check

    setattr(module, "socket_state", socket_state)  # noqa: B010 (the module is typed as ModuleType)


def _lock_waiter(module: ModuleType) -> None:
    setattr(module, "_Waiter", _LockWaiter)  # noqa: B010 (the module is typed as ModuleType)


def _no_wait_time_lock(module: ModuleType) -> None:
    original = module.ConnectionPool._wait_time

    def wait_time(self: Any, waiter: Any, remaining: float) -> float:
        # The backoff timer matters only while connecting fails.
        if not self._next_connect_at:
            return remaining
        return float(original(self, waiter, remaining))

    module.ConnectionPool._wait_time = wait_time


#: Prototype key -> (label, changes applied to a private copy of the engine).
PROTOTYPES: dict[str, tuple[str, list[Callable[[ModuleType], None]]]] = {
    "copy": ("engine copy, unchanged (control)", []),
    "no_getpid": ("no os.getpid() per lock section", [_no_getpid]),
    "no_notify": ("no observer call when none is registered", [_no_notify]),
    "no_return_poll": ("no socket poll at return", [_no_return_poll]),
    "poll_keeps_gil": ("socket poll that keeps the GIL (through ctypes)", [_poll_keeping_gil]),
    "lock_waiter": ("waiter = one plain lock, not an Event", [_lock_waiter]),
    "no_wait_time_lock": ("no lock section before each wait", [_no_wait_time_lock]),
    "all": (
        "all five together",
        [_no_getpid, _no_notify, _no_return_poll, _lock_waiter, _no_wait_time_lock],
    ),
}


def prototypes() -> dict[str, tuple[str, Callable[[str, int], OpenPool]]] | str:
    """Prototype key -> (label, opener); or why there are none."""
    out: dict[str, tuple[str, Callable[[str, int], OpenPool]]] = {}
    for key, (label, changes) in PROTOTYPES.items():
        module = _engine_copy(key)
        if module is None:
            return "the engine is no longer laid out as these prototypes expect (flask_pgpool/_pool.py)"
        for change in changes:
            change(module)

        def opener(dsn: str, size: int, module: ModuleType = module) -> OpenPool:
            pool = module.ConnectionPool(size, size, dsn)
            held = [pool.getconn() for _ in range(size)]
            for conn in held:
                pool.putconn(conn)
            return OpenPool(pool.getconn, pool.putconn, pool.closeall, pool)

        out[key] = (label, opener)
    return out


def run_whatif(
    dsn: str, shapes: list[tuple[int, int]], rounds: int, seconds: float, log: Callable[[str], None]
) -> dict[str, Any]:
    """Interleaved rounds of the prototypes, flask-pgpool and psycopg_pool; medians and paired ratios."""
    found = prototypes()
    if isinstance(found, str):
        return {"skipped": found}
    labels = {k: label for k, (label, _) in found.items()}
    labels.update({k: CONTENDERS[k].label for k in ("pgpool", "pgpool_nocheck", "psycopg_pool")})
    results: dict[str, Any] = {"labels": labels, "shapes": {}}
    for threads, conns in shapes:
        log(f"  what-if: {threads} thread(s) on {conns} connection(s)")
        pools: dict[str, OpenPool] = {}
        try:
            for key in labels:
                pools[key] = found[key][1](dsn, conns) if key in found else CONTENDERS[key].open(dsn, conns)
            for pool in pools.values():  # warm
                run_pairs(pool.getconn, pool.putconn, threads, 0.1)
            samples: dict[str, list[Sample]] = {key: [] for key in pools}
            for round_no in range(rounds):
                for key in _rotated(list(pools), round_no):
                    samples[key].append(run_pairs(pools[key].getconn, pools[key].putconn, threads, seconds))
        finally:
            for pool in pools.values():
                pool.close()
        shape: dict[str, Any] = {}
        for key, runs in samples.items():
            shape[key] = {
                "pairs_per_s": statistics.median(s.rate for s in runs),
                "vs_pgpool": _spread([s.rate / b.rate for s, b in zip(runs, samples["pgpool"], strict=True)]),
                "vs_psycopg_pool": statistics.median(
                    s.rate / b.rate for s, b in zip(runs, samples["psycopg_pool"], strict=True)
                ),
                # CPU time is less disturbed than wall time by the machine's other work.
                "cpu_us_per_pair": statistics.median(s.cpu_share * s.seconds / s.pairs * 1e6 for s in runs),
                "switches_per_pair": statistics.median(s.voluntary_switches for s in runs),
            }
        results["shapes"][f"{threads}/{conns}"] = shape
    return results
