"""What an attempt's replies mean for each recipient: pure decisions, no I/O, injected time.

A 2xx delivers, a 5xx bounces, a 4xx (or a failure of the connection, DNS or TLS policy,
which delivery reports as a 4xx :class:`DeliveryReply`) defers to the retry schedule's next
step, or bounces when the schedule says the message has expired. A script's action from
``post_delivery`` then overrides the verdict of every recipient that was not delivered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from mailwarden.delivery.errors import DeliveryReply
from mailwarden.policy.delivery import Bounce, Delete, DeliveryAction, Hold, Retry
from mailwarden.queue.retention import DEFAULT_RETENTION
from mailwarden.queue.schedule import RetrySchedule
from mailwarden.spool.outcomes import RecipientOutcome
from mailwarden.spool.states import RecipientState

# RFC 3463 X.4.7: delivery time expired. The DSN keeps the last reply as its diagnostic.
_EXPIRED = "expired after {attempts} attempts: "


@dataclass(frozen=True, slots=True)
class Verdict:
    """One recipient's fate after an attempt, and the DSN action it calls for (or None)."""

    position: int
    address: str
    state: RecipientState
    reply: DeliveryReply
    next_attempt: float | None = None
    count_attempt: bool = False
    dsn_action: str | None = None  # "failed", "delayed", "delivered", "relayed"
    delay_notified: bool | None = None  # True: this verdict's DSN is the delay warning
    on_expiry: str | None = None  # held: what the end of its retention (next_attempt) does

    def outcome(self) -> RecipientOutcome:
        return RecipientOutcome(
            position=self.position,
            state=self.state,
            reason=self.reply.text if self.state is not RecipientState.DELIVERED else "",
            last_reply=str(self.reply),
            next_attempt=self.next_attempt,
            count_attempt=self.count_attempt,
            delay_notified=self.delay_notified,
            on_expiry=self.on_expiry,
        )


def judge(
    position: int,
    address: str,
    retry_count: int,
    reply: DeliveryReply,
    *,
    schedule: RetrySchedule,
    received_at: float,
    now: float,
    success_dsn: str | None = None,
    warned: bool = True,
) -> Verdict:
    """The verdict on one recipient's reply. ``retry_count`` is its failures before this
    attempt; ``success_dsn`` the DSN action a 2xx calls for (``relayed`` when the next hop
    does not take DSN parameters, RFC 3461 §6.2.3), else None; ``warned`` False when no
    delay warning went out for the recipient yet (the schedule's ``delay_warning`` says when
    one is due: a deferral then asks for a ``delayed`` DSN, once)."""
    if reply.success:
        return Verdict(position, address, RecipientState.DELIVERED, reply, dsn_action=success_dsn)
    if reply.permanent:
        return Verdict(
            position,
            address,
            RecipientState.BOUNCED,
            reply,
            count_attempt=True,
            dsn_action="failed",
        )
    failures = retry_count + 1
    when = schedule.after_failure(failures, received_at, now)
    if when is None:
        expired = replace(reply, text=_EXPIRED.format(attempts=failures) + reply.text)
        return Verdict(
            position,
            address,
            RecipientState.BOUNCED,
            expired,
            count_attempt=True,
            dsn_action="failed",
        )
    if schedule.delay_warning_due(received_at, now, warned=warned):
        return Verdict(
            position,
            address,
            RecipientState.DEFERRED,
            reply,
            when,
            count_attempt=True,
            dsn_action="delayed",
            delay_notified=True,
        )
    return Verdict(position, address, RecipientState.DEFERRED, reply, when, count_attempt=True)


def override(
    verdicts: Sequence[Verdict],
    action: DeliveryAction | None,
    *,
    schedule: RetrySchedule,
    retry_counts: Sequence[int],
    received_at: float,
    now: float,
    hold_retention: float = DEFAULT_RETENTION,
) -> list[Verdict]:
    """The verdicts after a script's action: it changes every recipient not delivered
    (``retry_counts`` in the same order as ``verdicts``; ``hold_retention`` for a ``Hold``
    that gives no retention)."""
    if action is None:
        return list(verdicts)
    changed = []
    for verdict, retries in zip(verdicts, retry_counts, strict=True):
        if verdict.state is RecipientState.DELIVERED:
            changed.append(verdict)
        else:
            changed.append(
                apply_action(
                    verdict.position,
                    verdict.address,
                    retries,
                    action,
                    reply=verdict.reply,
                    schedule=schedule,
                    received_at=received_at,
                    now=now,
                    hold_retention=hold_retention,
                )
            )
    return changed


def apply_action(
    position: int,
    address: str,
    retry_count: int,
    action: DeliveryAction,
    *,
    reply: DeliveryReply | None,
    schedule: RetrySchedule,
    received_at: float,
    now: float,
    hold_retention: float = DEFAULT_RETENTION,
) -> Verdict:
    """The verdict a script's action gives one recipient (``reply``: the attempt's, if any).
    A ``Hold`` keeps it from ``now`` for its retention (``hold_retention`` if it gives none):
    the retention end is the held recipient's next attempt (:mod:`~mailwarden.queue.retention`)."""
    if isinstance(action, Bounce):
        return Verdict(
            position,
            address,
            RecipientState.BOUNCED,
            action.reply,
            count_attempt=reply is not None,
            dsn_action="failed",
        )
    if isinstance(action, Delete):
        # Discarded is final: the message leaves the spool once its other recipients are.
        deleted = DeliveryReply(250, "2.0.0", action.reason)
        return Verdict(position, address, RecipientState.DISCARDED, deleted)
    if isinstance(action, Hold):
        held = reply or DeliveryReply(450, "4.0.0", action.reason)
        terms = action.terms(hold_retention)
        return Verdict(
            position,
            address,
            RecipientState.HELD,
            replace(held, text=action.reason),
            next_attempt=terms.until(now),
            on_expiry=terms.on_expiry.value,
        )
    assert isinstance(action, Retry)
    if action.at is not None:
        when = action.at
    elif action.delay is not None:
        when = now + action.delay
    else:
        step = schedule.after_failure(retry_count + 1, received_at, now)
        when = now if step is None else step
    later = reply if reply is not None and not reply.success else None
    deferred = later or DeliveryReply(450, "4.0.0", action.reason)
    return Verdict(
        position,
        address,
        RecipientState.DEFERRED,
        deferred,
        next_attempt=when,
        count_attempt=action.count,
    )
