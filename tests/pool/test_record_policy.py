"""The per-connection policy and the wait queue, on their own: pure logic, no server.

These decide whether a connection is handed out, pinged, kept or closed, and
who gets a returned connection; hypothesis explores the times and flags.
"""

from __future__ import annotations

import select
from typing import Any, cast

from hypothesis import given
from hypothesis import strategies as st
from psycopg2.extensions import connection

from flask_pgpool._health import SocketState
from flask_pgpool._record import MIN_PING, ConnectionRecord, HealthPolicy, Verdict, ping_budget
from flask_pgpool._waiting import Waiter, WaitQueue

times = st.floats(min_value=0, max_value=10_000, allow_nan=False)
durations = st.floats(min_value=0.001, max_value=10_000, allow_nan=False)
sockets = st.sampled_from(list(SocketState))
policies = st.builds(
    HealthPolicy,
    health_check=st.booleans(),
    ping_after=st.one_of(st.none(), st.floats(min_value=0, max_value=100, allow_nan=False)),
    max_idle=durations,
)


def record(opened_at: float, lifetime: float, last_used: float, generation: int = 0) -> ConnectionRecord:
    # The policy never touches the connection or its poller.
    rec = ConnectionRecord(
        cast(connection, None), cast(select.poll, None), (), opened_at=opened_at, lifetime=lifetime
    )
    rec.last_used = max(opened_at, last_used)
    rec.generation = generation
    return rec


@given(
    opened=times,
    lifetime=durations,
    idle=times,
    later=times,
    socket=sockets,
    policy=policies,
    suspect_before=st.one_of(st.just(float("-inf")), times),
    generations=st.tuples(st.integers(0, 3), st.integers(0, 3)),
)
def test_checkout_verdict(
    opened: float,
    lifetime: float,
    idle: float,
    later: float,
    socket: SocketState,
    policy: HealthPolicy,
    suspect_before: float,
    generations: tuple[int, int],
) -> None:
    mine, pools = generations
    rec = record(opened, lifetime, opened + idle, generation=mine)
    now = rec.last_used + later
    verdict = rec.checkout_verdict(now, socket, policy, suspect_before=suspect_before, generation=pools)

    if now >= rec.expires:
        assert verdict is Verdict.EXPIRED  # an expired connection is never handed out, nor counted lost
    elif mine < pools:
        assert verdict is Verdict.RETIRED
    elif socket is SocketState.DEAD:
        assert verdict is Verdict.DEAD  # a dead one is never handed out, even with health_check off
    elif not policy.health_check:
        assert verdict is Verdict.USE  # no round trip when the user turned checks off
    else:
        due = policy.ping_after is not None and now - rec.last_used >= policy.ping_after
        needs_ping = socket is SocketState.UNSURE or rec.last_used <= suspect_before or due
        assert verdict is (Verdict.PING if needs_ping else Verdict.USE)


@given(
    opened=times,
    lifetime=durations,
    idle=times,
    later=times,
    policy=policies,
    suspect_before=st.one_of(st.just(float("-inf")), times),
    verify_before=st.one_of(st.just(float("-inf")), times),
    verified=times,
    generations=st.tuples(st.integers(0, 3), st.integers(0, 3)),
)
def test_the_checkout_fast_path_never_skips_what_the_verdict_would_do(
    opened: float,
    lifetime: float,
    idle: float,
    later: float,
    policy: HealthPolicy,
    suspect_before: float,
    verify_before: float,
    verified: float,
    generations: tuple[int, int],
) -> None:
    """getconn() hands a fresh record out on a quiet socket without the verdict: only where the verdict says USE."""
    mine, pools = generations
    rec = record(opened, lifetime, opened + idle, generation=mine)
    rec.verified_at = verified
    now = rec.last_used + later
    # What ConnectionPool derives from its options for the fast path.
    ping_after = float("inf") if policy.ping_after is None else policy.ping_after
    quick_age = ping_after if policy.health_check else float("-inf")
    fresh = rec.fresh(now, pools, suspect_before, verify_before, quick_age)
    verdict = rec.checkout_verdict(now, SocketState.QUIET, policy, suspect_before, pools, verify_before)
    if fresh:
        assert verdict is Verdict.USE
    if not policy.health_check:
        assert not fresh  # with the check off the full verdict always decides
    elif verdict is Verdict.USE and rec.last_used > suspect_before:
        assert fresh  # the fast path is taken whenever nothing is suspect


@given(lifetime=durations, at=times)
def test_lifetime_has_jitter_within_ten_percent(lifetime: float, at: float) -> None:
    rec = record(at, lifetime, at)
    assert at + lifetime * 0.9 - 1e-6 <= rec.expires <= at + lifetime + 1e-6


@given(remaining=st.floats(-10, 100, allow_nan=False), limit=durations, round_trip=st.floats(0, 5, allow_nan=False))
def test_ping_budget(remaining: float, limit: float, round_trip: float) -> None:
    budget = ping_budget(remaining, limit, round_trip)
    if remaining <= 0:
        assert budget is None  # no time left: the connection is handed on, not killed
        return
    assert budget is not None
    assert budget <= limit
    # Never so short that a healthy connection on this network would be cut off...
    assert budget >= min(limit, max(MIN_PING, 4 * round_trip)) - 1e-9
    # ...and half the time left when there is plenty.
    assert budget >= min(limit, remaining / 2) - 1e-9


@given(
    opened=times,
    lifetime=durations,
    idle=times,
    policy=policies,
    above_minconn=st.booleans(),
)
def test_tidy_verdict(opened: float, lifetime: float, idle: float, policy: HealthPolicy, above_minconn: bool) -> None:
    rec = record(opened, lifetime, opened)
    now = opened + idle
    verdict = rec.tidy_verdict(now, policy, above_minconn=above_minconn, generation=0)
    if now >= rec.expires or (above_minconn and now - rec.last_used >= policy.max_idle):
        assert verdict is Verdict.EXPIRED
    else:
        assert verdict is Verdict.USE  # minconn connections are kept however long they idle


@given(opened=times, lifetime=durations, later=times, generations=st.tuples(st.integers(0, 3), st.integers(0, 3)))
def test_keep_after_return(opened: float, lifetime: float, later: float, generations: tuple[int, int]) -> None:
    mine, pools = generations
    rec = record(opened, lifetime, opened, generation=mine)
    now = opened + later
    assert rec.keep_after_return(now, pools) == (now < rec.expires and mine >= pools)


@given(ops=st.lists(st.sampled_from(["join", "leave_first", "leave_last", "hand_over", "rejoin"]), max_size=40))
def test_wait_queue_is_first_come_first_served(ops: list[str]) -> None:
    """Whatever joins and leaves happen, a hand-over goes to the longest waiting."""
    queue = WaitQueue()
    model: list[Any] = []  # the waiters in the order they must be served
    served: list[Any] = []
    for number, op in enumerate(ops):
        if op == "join":
            waiter = Waiter()  # each thread has one; here each join stands for another thread
            queue.enqueue(waiter)
            model.append(waiter)
        elif op == "leave_first" and model:
            queue.leave(model.pop(0))
        elif op == "leave_last" and model:
            queue.leave(model.pop())
        elif op == "hand_over":
            rec = record(0, 1, 0)
            rec.key = number
            handed = queue.hand_over(rec)
            assert handed is (model[0] if model else None)
            if model:
                first = model.pop(0)
                assert first.signalled and first.take() is rec and not first.signalled
                served.append(first)
        elif op == "rejoin" and served:
            waiter = served.pop()
            queue.rejoin_first(waiter)
            model.insert(0, waiter)
        assert queue.waiting() == model
