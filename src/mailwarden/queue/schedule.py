"""When a message that failed is tried again, and when it has waited long enough to bounce.

Pure functions of their arguments (no clock, no I/O): the queue manager passes ``now``.

The schedule (issue 7; Postfix's ``minimal_backoff_time``/``maximal_queue_lifetime`` in spirit):
after the *n*-th failed attempt the next one is ``intervals[n-1]`` seconds later; past the end of
``intervals`` the last interval repeats (by default 1, 5, 15, 30, 60 minutes, then hourly). A
message is given up ``max_age`` seconds after it arrived (default 5 days, Postfix's
``maximal_queue_lifetime``).

Near the end of its life a message gets exactly one last attempt *at* its expiry time: when the
next attempt would fall after ``received_at + max_age`` it is moved to that instant instead, and a
failure at or after expiry returns None (bounce). So no attempt is ever scheduled beyond
``received_at + max_age`` (Postfix may try once more up to one backoff interval past it, and
bounces only when that fails), and a message that arrives with ``max_age`` already behind it (a
clock set back, a restored spool) is bounced at its first failure without a further wait.

Which failures retry at all is not decided here: a temporary reply (4xx) or a failure of ours
(connection refused, timeout, DNS, TLS policy: ``DeliveryError`` with a 4xx reply) retries; a
permanent reply (5xx) bounces at once (:func:`next_step`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from mailwarden.delivery.errors import DeliveryReply

DEFAULT_INTERVALS: tuple[float, ...] = (60, 300, 900, 1800, 3600)
DEFAULT_MAX_AGE = 5 * 86400.0


@dataclass(frozen=True, slots=True)
class RetrySchedule:
    """The retry intervals, the lifetime of a message and when a delay warning is due.

    ``intervals[i]`` is the wait after the ``i+1``-th failure; the last one repeats. They must be
    positive and never shrink (a schedule that tries more often the longer a destination fails
    hammers a dead host). ``delay_warning``: seconds after arrival from which a DELAY DSN
    (RFC 3461 §4.1 NOTIFY=DELAY) is due at the next failure; None sends none (as Postfix's
    default ``delay_warning_time = 0``).
    """

    intervals: tuple[float, ...] = DEFAULT_INTERVALS
    max_age: float = DEFAULT_MAX_AGE
    delay_warning: float | None = None

    def __post_init__(self) -> None:
        if not self.intervals:
            raise ValueError("a retry schedule needs at least one interval")
        if any(not interval > 0 for interval in self.intervals):
            raise ValueError(f"retry intervals must be > 0 seconds, got {self.intervals!r}")
        if any(b < a for a, b in itertools.pairwise(self.intervals)):
            raise ValueError(f"retry intervals must never shrink, got {self.intervals!r}")
        if not self.max_age > 0:
            raise ValueError(f"max_age must be > 0 seconds, got {self.max_age!r}")
        if self.delay_warning is not None and not self.delay_warning > 0:
            raise ValueError(f"delay_warning must be > 0 seconds or None, got {self.delay_warning}")

    def interval(self, failures: int) -> float:
        """The wait after the ``failures``-th failure (the last interval repeats)."""
        if failures < 1:
            raise ValueError(f"failures counts failed attempts from 1, got {failures}")
        return self.intervals[min(failures, len(self.intervals)) - 1]

    def expires_at(self, received_at: float) -> float:
        """The instant a message that arrived at ``received_at`` is given up."""
        return received_at + self.max_age

    def after_failure(self, failures: int, received_at: float, now: float) -> float | None:
        """When to try again after the ``failures``-th failed attempt, or None: expired (bounce).

        The result is ``now + interval(failures)``, moved back to the expiry instant when it
        would fall later (one last attempt at expiry); None once ``now`` has reached the
        expiry instant. Never earlier than ``now``.
        """
        expiry = self.expires_at(received_at)
        if now >= expiry:
            return None
        return min(now + self.interval(failures), expiry)

    def delay_warning_due(self, received_at: float, now: float, *, warned: bool) -> bool:
        """Whether a failure at ``now`` should send the (single) delay warning."""
        if self.delay_warning is None or warned:
            return False
        return now >= received_at + self.delay_warning


@dataclass(frozen=True, slots=True)
class Retry:
    """Try the recipient again at ``at`` (a ``time.time()`` instant)."""

    at: float
    reply: DeliveryReply


@dataclass(frozen=True, slots=True)
class Bounce:
    """Give the recipient up and bounce it with ``reply``; ``expired`` when the reason is age.

    On expiry the reply is the last temporary one as received (as Postfix does: the DSN's
    Diagnostic-Code shows why the message could not be delivered), with ``expired`` set so the
    DSN can say the message was too old."""

    reply: DeliveryReply
    expired: bool = False


def next_step(
    schedule: RetrySchedule, reply: DeliveryReply, failures: int, received_at: float, now: float
) -> Retry | Bounce:
    """What happens to a recipient after a failed attempt (``failures`` includes this one).

    A permanent reply (5xx) bounces now; a temporary one (4xx, including our own connection,
    timeout and TLS failures) retries on the schedule until the message expires.
    """
    if reply.success:
        raise ValueError(f"next_step is for failed attempts, got {reply}")
    if reply.permanent:
        return Bounce(reply)
    at = schedule.after_failure(failures, received_at, now)
    if at is None:
        return Bounce(reply, expired=True)
    return Retry(at, reply)
