"""A process that does a given number of pairs on one pool, for tools that watch a whole process.

``python -m benchmarks.engine.probe CONTENDER THREADS CONNS PAIRS --dsn DSN [--marks]``

perf, strace and valgrind run it twice, with PAIRS and with 0: the
difference is the pairs' own cost, without start-up and set-up. With
``--marks`` (one thread) a failing ``stat()`` of a marker path precedes each
checkout and each return, so that a system-call trace can be cut per step.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
from collections.abc import Callable

from .contenders import CONTENDERS, OpenPool

__all__ = ["MARK_CHECKOUT", "MARK_END", "MARK_RETURN", "main"]

MARK_CHECKOUT = "/nonexistent-pgpool-bench-mark/checkout"
MARK_RETURN = "/nonexistent-pgpool-bench-mark/return"
MARK_END = "/nonexistent-pgpool-bench-mark/end"


def _mark(path: str) -> None:
    with contextlib.suppress(OSError):
        os.stat(path)


def _opener(name: str) -> Callable[[str, int], OpenPool]:
    if name.startswith("whatif."):
        from .whatif import prototypes

        found = prototypes()
        if isinstance(found, str):
            raise SystemExit(found)
        return found[name.removeprefix("whatif.")][1]
    return CONTENDERS[name].open


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.engine.probe", description=__doc__)
    ap.add_argument("contender", help=f"one of {', '.join(CONTENDERS)}, or whatif.KEY for a prototype")
    ap.add_argument("threads", type=int)
    ap.add_argument("conns", type=int)
    ap.add_argument("pairs", type=int, help="pairs in all, shared among the threads")
    ap.add_argument("--dsn", required=True)
    ap.add_argument("--marks", action="store_true")
    args = ap.parse_args(argv)
    pool = _opener(args.contender)(args.dsn, args.conns)
    get, put = pool.getconn, pool.putconn
    for _ in range(100):  # warm: code paths hot in the 0-pair run too
        put(get())
    per_thread = args.pairs // args.threads
    try:
        if args.marks:
            for _ in range(args.pairs):
                _mark(MARK_CHECKOUT)
                conn = get()
                _mark(MARK_RETURN)
                put(conn)
            _mark(MARK_END)
        else:
            start = threading.Barrier(args.threads)

            def work() -> None:
                start.wait()
                for _ in range(per_thread):
                    put(get())

            threads = [threading.Thread(target=work) for _ in range(args.threads)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    finally:
        pool.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
