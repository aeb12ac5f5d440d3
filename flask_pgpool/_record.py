"""One pooled connection's record, and the pure policy that decides its fate.

The pool asks a record three questions: may it be handed out now
(:meth:`ConnectionRecord.checkout_verdict`, or its fast subset
:meth:`ConnectionRecord.fresh`), may it stay after a return
(:meth:`ConnectionRecord.keep_after_return`), and should the housekeeper close
it (:meth:`ConnectionRecord.tidy_verdict`). The answers depend only on times,
flags and what the socket showed: no server and no lock, so the policy is
tested on its own, with hypothesis (tests/pool/test_record_policy.py).
"""

from __future__ import annotations

import enum
import random
import select
import traceback
from dataclasses import dataclass
from typing import Any

from psycopg2.extensions import connection

from ._health import SocketState

__all__ = ["ConnectionRecord", "HealthPolicy", "Verdict", "ping_budget"]

# Connection lifetimes are shortened by up to this fraction, at random, so that
# connections opened together do not all expire together.
LIFETIME_JITTER = 0.1
# A ping is never given less than this, nor less than a few round trips: a
# ping cut short shuts the socket down, so a budget too tight for the network
# would kill healthy connections.
MIN_PING = 0.2
PING_ROUND_TRIPS = 4


class Verdict(enum.Enum):
    USE = "use"  # hand it out as it is
    PING = "ping"  # ask the server first (one round trip)
    EXPIRED = "expired"  # past its lifetime: close it; not a failure
    RETIRED = "retired"  # opened before drain(): close it; not a failure
    DEAD = "dead"  # closed or broken: close it and count it lost


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    """The pool's options that the verdicts depend on."""

    health_check: bool = True
    ping_after: float | None = 30.0
    max_idle: float = 600.0


class ConnectionRecord:
    """What the pool knows of one open connection.

    Fields are read and written under the pool's lock, except ``stack``
    (written by the thread that checked the connection out, read by the
    housekeeper: a torn read only loses a stack).
    """

    __slots__ = (
        "checked_out_at",
        "conn",
        "expires",
        "generation",
        "in_use",
        "key",
        "last_used",
        "leak_reported",
        "on_primary",
        "opened_at",
        "poller",
        "session",
        "stack",
        "verified_at",
    )

    def __init__(
        self,
        conn: connection,
        poller: select.poll,
        session: tuple[Any, ...],
        *,
        opened_at: float,
        lifetime: float,
        generation: int = 0,
    ) -> None:
        self.conn = conn
        self.poller = poller  # watches the socket for the health check
        self.session = session  # client-side settings to restore on return
        self.opened_at = opened_at
        self.expires = opened_at + lifetime * (1.0 - random.uniform(0.0, LIFETIME_JITTER))
        self.generation = generation  # the pool's drain() count when it was opened
        self.last_used = opened_at
        self.checked_out_at = 0.0
        self.in_use = False
        self.key: Any = None  # the key of a keyed getconn(), else None
        self.stack: traceback.StackSummary | None = None
        self.leak_reported = False
        # Failover (see _failover): opened on a server that took writes (its
        # every return is then looked at), and when that was last known to
        # hold (opened, or pinged since).
        self.on_primary = False
        self.verified_at = opened_at

    def checkout_verdict(
        self,
        now: float,
        socket: SocketState,
        policy: HealthPolicy,
        suspect_before: float,
        generation: int,
        verify_before: float = float("-inf"),
    ) -> Verdict:
        """May this idle connection be handed out, given what its socket shows?

        ``suspect_before``: connections last used before then may have died
        unseen (an older one was found dead). ``generation``: the pool's
        current drain() count. ``verify_before``: connections not verified
        since then may point at a server that no longer takes writes (a
        failover was detected); they are pinged even without health checks.
        """
        if now >= self.expires:
            return Verdict.EXPIRED
        if self.generation < generation:
            return Verdict.RETIRED
        if socket is SocketState.DEAD:
            return Verdict.DEAD
        if self.verified_at < verify_before:
            return Verdict.PING
        if not policy.health_check:
            return Verdict.USE
        if socket is SocketState.UNSURE or self.last_used <= suspect_before:
            return Verdict.PING
        if policy.ping_after is not None and now - self.last_used >= policy.ping_after:
            return Verdict.PING
        return Verdict.USE

    def fresh(
        self, now: float, generation: int, suspect_before: float, verify_before: float, quick_age: float
    ) -> bool:
        """The checkout's fast path: may this idle connection be handed out on a quiet socket alone?

        True only where :meth:`checkout_verdict` says USE for a QUIET socket
        with the health check on (tests/pool/test_record_policy.py proves
        it): not expired, not retired, nothing suspect or failed over since
        it was last used, and younger than ``quick_age`` (``ping_after``,
        infinity for None; minus infinity with the health check off, when
        only checkout_verdict() decides). Anything else goes to the full verdict.
        """
        last_used = self.last_used
        return (
            now - last_used < quick_age
            and now < self.expires
            and self.generation >= generation
            and last_used > suspect_before
            and self.verified_at >= verify_before
        )

    def keep_after_return(self, now: float, generation: int) -> bool:
        """May a connection returned in good order go back to the idle list?"""
        return now < self.expires and self.generation >= generation

    def tidy_verdict(self, now: float, policy: HealthPolicy, *, above_minconn: bool, generation: int) -> Verdict:
        """Should the housekeeper close this idle connection?"""
        if now >= self.expires:
            return Verdict.EXPIRED
        if self.generation < generation:
            return Verdict.RETIRED
        if above_minconn and now - self.last_used >= policy.max_idle:
            return Verdict.EXPIRED
        return Verdict.USE

    def leaked(self, now: float, leak_timeout: float | None) -> bool:
        """Checked out for longer than ``leak_timeout`` and not reported yet."""
        return (
            leak_timeout is not None
            and self.in_use
            and not self.leak_reported
            and now - self.checked_out_at >= leak_timeout
        )


def ping_budget(remaining: float, limit: float, round_trip: float) -> float | None:
    """Seconds to give a ping at checkout, or None when the checkout has no time left.

    Half the checkout's time left, so that a silent network leaves time to
    open another connection; never more than ``limit``; and never less than a
    few of the network's ``round_trip`` times (nor :data:`MIN_PING`), even if
    that runs past the checkout's deadline: a ping cut short shuts the socket
    down, and a budget too tight for the network would kill healthy
    connections.
    """
    if remaining <= 0:
        return None
    floor = min(limit, max(MIN_PING, PING_ROUND_TRIPS * round_trip))
    return min(limit, max(remaining / 2, floor))
