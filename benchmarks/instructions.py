"""Instructions per request, counted by valgrind: ``python -m benchmarks.overhead --instructions``.

Wall-clock and CPU times of a few microseconds move by more than the few per
cent this measures on a shared machine; the number of instructions a request
executes does not. Each case runs in a child process under
``valgrind --tool=callgrind`` (the main thread's instructions, not the pool's
background threads'): once serving ``requests`` test-client requests after
its warm-up, once serving none (the baseline: start-up, imports,
connections, warm-up). The difference divided by ``requests`` is the cost of
one request; the median of ``runs`` such pairs is reported.

Run ``n`` uses ``PYTHONHASHSEED=n``. A count moves far less than a time with
the machine's load, but it does move with where the interpreter's objects land: CPython 3.11's
method cache indexes (type version, name address) pairs, and collisions
there, or in dicts, cost a request of the same code up to about 5,000
instructions more or less from one process layout to another (a change to
the run's environment or to unrelated code is enough). Runs under different
hash seeds see different layouts; their median is what compares.

The child imports ``flask_pgpool`` from ``code`` (by default this checkout),
and only its public names, so that an older checkout of the package can be
measured by the same harness (``--code DIR``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["CASES", "REFERENCE", "Count", "count_case", "lean_app", "measure", "print_counts"]

#: The benchmarks package's parent: the child imports ``benchmarks`` from here.
_ROOT = Path(__file__).resolve().parent.parent

#: Case key -> what it measures. The order is the table's.
CASES: dict[str, str] = {
    "dedicated": "GET /db, dedicated connection per thread",
    "lean": "GET /db, lean glue + ConnectionPool",
    "extension": "GET /db, flask-pgpool (PgPool + get_db)",
    "dedicated-nodb": "GET /nodb, dedicated-connection app",
    "extension-nodb": "GET /nodb, flask-pgpool app",
}
#: The case every ratio is taken against.
REFERENCE = "dedicated"
#: Requests served before counting starts, in both runs of a pair: connections
#: open, the interpreter's specialised instructions in place.
WARMUP = 50


@dataclass(frozen=True)
class Count:
    """Instructions per request of one case, over ``runs`` pairs of runs."""

    case: str
    per_request: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.per_request)

    @property
    def spread(self) -> float:
        return max(self.per_request) - min(self.per_request)


def lean_app(dsn: str, pool: Any = None) -> Any:
    """A lean hand-written glue on ConnectionPool: one context lookup per checkout and per teardown.

    What the extension's glue is compared with: the connection in the app
    context's ``g.__dict__``, given back by one teardown function; none of the
    extension's guarantees (per-request leases inside a borrowed app context,
    streamed bodies, the use-after-end check, the 503). ``pool``: any pool
    with ``getconn()`` and ``putconn()`` (default: a ConnectionPool of 1 to 4).
    """
    from flask_pgpool import ConnectionPool

    from .apps.common import make_app

    current = _app_context_reader()
    if pool is None:
        pool = ConnectionPool(1, 4, dsn)
    key = "_bench_lean_conn"

    def get_conn() -> Any:
        ctx = current()
        assert ctx is not None
        ns = ctx.g.__dict__
        conn = ns.get(key)
        if conn is None:
            conn = ns[key] = pool.getconn()
        return conn

    app = make_app("lean", get_conn)

    @app.teardown_appcontext
    def give_back(exc: BaseException | None) -> None:
        ctx = current()
        conn = ctx.g.__dict__.pop(key, None) if ctx is not None else None
        if conn is not None:
            pool.putconn(conn)

    return app


def _app_context_reader() -> Callable[[], Any]:
    """The measured checkout's own C-level reader of the current app context (Flask's context variable)."""
    try:
        from flask_pgpool._flask_compat import app_context

        return app_context
    except ImportError:
        # A checkout from before _flask_compat: its extension module imported the variable itself.
        import functools

        from flask_pgpool._extension import _cv_app  # type: ignore[attr-defined,unused-ignore]

        return functools.partial(_cv_app.get, None)


def _request(case: str, dsn: str) -> Callable[[], Any]:
    """One request of ``case``: a test-client GET."""
    if case.startswith("dedicated"):
        from .apps import dedicated_app

        app = dedicated_app.create_app(dsn, 4)
    elif case.startswith("extension"):
        from .apps import pgpool_app

        app = pgpool_app.create_app(dsn, 4)
    else:
        app = lean_app(dsn)
    client = app.test_client()
    path = "/nodb" if case.endswith("-nodb") else "/db"

    def get() -> Any:
        response = client.get(path)
        assert response.status_code == 200, response.status_code
        return response

    return get


def _child(argv: Sequence[str]) -> int:
    """In the counted process: warm up, then serve ``requests`` requests of one case."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.instructions")
    ap.add_argument("case", choices=list(CASES))
    ap.add_argument("requests", type=int)
    ap.add_argument("--dsn", required=True)
    ap.add_argument("--code", required=True)
    args = ap.parse_args(argv)
    sys.path.insert(0, args.code)
    import flask_pgpool

    if not Path(flask_pgpool.__file__ or "").resolve().is_relative_to(Path(args.code).resolve()):
        raise SystemExit(f"flask_pgpool was imported from {flask_pgpool.__file__}, not from {args.code}")
    get = _request(args.case, args.dsn)
    for _ in range(WARMUP):
        get()
    for _ in range(args.requests):
        get()
    return 0


_TOTAL = re.compile(rb"^(?:summary|totals):\s*(\d+)", re.MULTILINE)


def _instructions(case: str, requests: int, dsn: str, code: Path, out: Path, valgrind: str, seed: int) -> int:
    """Instructions the child's main thread executed (callgrind's total for thread 1).

    Only the main thread serves the requests. The pool's background threads
    (housekeeping, connects) wake on timers, and valgrind slows the process
    down by the machine's load: counted with them, the same run differed by
    up to a million instructions.
    """
    env = dict(os.environ, PYTHONHASHSEED=str(seed), PYTHONPATH=str(_ROOT))
    cmd = [
        valgrind,
        "--tool=callgrind",
        "--separate-threads=yes",
        f"--callgrind-out-file={out}",
        sys.executable,
        "-m",
        "benchmarks.instructions",
        case,
        str(requests),
        "--dsn",
        dsn,
        "--code",
        str(code),
    ]
    done = subprocess.run(cmd, env=env, cwd=_ROOT, capture_output=True, check=False)
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-15:]
        raise RuntimeError(f"counting {case} failed ({done.returncode}):\n" + "\n".join(tail))
    main = out.with_name(out.name + "-01")  # --separate-threads: one file per thread, the main thread first
    found = _TOTAL.search(main.read_bytes())
    if found is None:
        raise RuntimeError(f"no instruction total in {main}")
    return int(found.group(1))


def count_case(
    case: str, dsn: str, *, requests: int, runs: int, code: Path, keep: Path | None = None, valgrind: str = "valgrind"
) -> Count:
    """Instructions per request of ``case``: ``runs`` pairs (``requests`` requests, and none)."""
    per_request = []
    with tempfile.TemporaryDirectory(prefix="pgpool-callgrind-") as tmp:
        folder = keep if keep is not None else Path(tmp)
        for run in range(runs):
            full = _instructions(case, requests, dsn, code, folder / f"callgrind.{case}.{run}.out", valgrind, run)
            base = _instructions(case, 0, dsn, code, folder / f"callgrind.{case}.{run}.base.out", valgrind, run)
            per_request.append((full - base) / requests)
    return Count(case, per_request)


def measure(
    dsn: str,
    cases: Sequence[str],
    *,
    requests: int,
    runs: int,
    code: Path | None = None,
    keep: Path | None = None,
) -> dict[str, Count]:
    """Count every case in ``cases``, one after the other."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("--instructions needs valgrind (apt-get install valgrind)")
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
    code = (code or _ROOT).resolve()
    return {
        case: count_case(case, dsn, requests=requests, runs=runs, code=code, keep=keep, valgrind=valgrind)
        for case in cases
    }


def print_counts(counts: dict[str, Count], code: Path | None = None) -> None:
    """The table: instructions per request (median, spread of the runs), and the ratio to a dedicated connection."""
    print(f"flask_pgpool from {(code or _ROOT).resolve()}")
    width = max(len(CASES[case]) for case in counts)
    print(f"{'case':<{width}} {'instr/request':>14} {'spread':>8} {'ratio':>7}")
    for case, count in counts.items():
        # /db against the dedicated connection's /db, /nodb against its /nodb.
        reference = counts.get(REFERENCE + ("-nodb" if case.endswith("-nodb") else ""))
        ratio = f"{count.median / reference.median:7.3f}" if reference is not None else ""
        print(f"{CASES[case]:<{width}} {count.median:14,.0f} {count.spread:8,.0f} {ratio:>7}")


if __name__ == "__main__":
    raise SystemExit(_child(sys.argv[1:]))
