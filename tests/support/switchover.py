"""The two failovers the tests and ``python -m benchmarks.failover`` put an app through.

* :func:`stop_and_promote`: the primary stops (its sessions die), the standby is
  promoted, the old primary starts again as a standby of the new one.
* :func:`fence_and_promote`: the primary is fenced read-only and stays up with
  its sessions, as switchover tools do; the standby catches up and is promoted.

Both run while a :class:`support.writeload.Load` keeps the app busy, and
return a :class:`Timeline` for :meth:`support.writeload.Figures.of`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from .replication import ReplicatedPair, scalar
from .writeload import Load, successes_since

__all__ = ["Timeline", "committed_tokens", "fence_and_promote", "stop_and_promote", "warm_up"]

#: Generous bounds for a loaded machine: they fail a run that hangs, they time nothing.
WAIT = 30.0


@dataclass(frozen=True)
class Timeline:
    """When the moves happened (time.monotonic()), and which node is which."""

    fault: float  # the primary stopped or was fenced
    promote_started: float
    promoted: float
    old_port: int
    new_port: int


def warm_up(load: Load, writes: int = 20) -> None:
    """Wait until the app has acknowledged ``writes`` writes."""
    count = successes_since(float("-inf"), "write")
    load.wait_for(lambda o: count(o) >= writes, timeout=WAIT, what=f"{writes} writes before the failover")


def fence_and_promote(
    pair: ReplicatedPair, load: Load, *, fenced_for: float, writes_after: int | None = 30, run_after: float = 0.0
) -> Timeline:
    """Fence the primary read-only (sessions kept); after ``fenced_for`` s promote the caught-up standby.

    Returns once ``writes_after`` writes have succeeded after the promotion, or
    (``writes_after=None``) ``run_after`` s after it.
    """
    old, new = pair.primary, pair.standby
    fault = time.monotonic()
    pair.fence(old)
    pair.wait_replayed(old)
    time.sleep(max(0.0, fault + fenced_for - time.monotonic()))
    promote_started = time.monotonic()
    new.promote()
    promoted = time.monotonic()
    _run_after(load, promoted, writes_after, run_after)
    return Timeline(fault, promote_started, promoted, old.port, new.port)


def stop_and_promote(
    pair: ReplicatedPair, load: Load, *, down_for: float, writes_after: int | None = 30, run_after: float = 0.0
) -> Timeline:
    """Stop the primary (fast: sessions killed); after ``down_for`` s promote the standby; rejoin the old one.

    Returns as :func:`fence_and_promote` does, counting from the rejoin.
    """
    old, new = pair.primary, pair.standby
    fault = time.monotonic()
    old.stop("fast")
    time.sleep(max(0.0, fault + down_for - time.monotonic()))
    promote_started = time.monotonic()
    new.promote()
    promoted = time.monotonic()
    pair.rejoin(old, new)
    _run_after(load, time.monotonic(), writes_after, run_after)
    return Timeline(fault, promote_started, promoted, old.port, new.port)


def _run_after(load: Load, moment: float, writes: int | None, seconds: float) -> None:
    if writes is None:
        time.sleep(max(0.0, moment + seconds - time.monotonic()))
        return
    count = successes_since(moment, "write")
    load.wait_for(lambda o: count(o) >= writes, timeout=WAIT, what=f"{writes} writes after the promotion")


def committed_tokens(pair: ReplicatedPair, table: str) -> set[str]:
    """The tokens the primary (the node that takes writes) holds now."""
    rows = scalar(pair.primary, f"SELECT array_agg(token) FROM {table}")
    return set(rows or ())
