"""Quarantine retention: how long a held recipient is kept, and what happens when that ends.

A quarantine is a held message with a retention time (issue 7). Every hold (a script's
``Hold``, ``queue update hold``) sets the recipients' retention end: the time of the hold plus
the retention (``[queue] hold_retention`` unless the hold gives its own). When it passes, the
still held recipients are discarded (final, no DSN: the default, since quarantined mail is
mostly spam and a bounce to a forged sender is backscatter), or bounced with a DSN when the
hold said ``on_expiry="bounce"``; a message leaves the spool once every recipient is final.
A retention of ``0`` or ``"forever"`` keeps the recipients until an operator releases them.

Where it is stored: a held recipient is never attempted, so its ``next_attempt`` (otherwise
unused while held: leases, the next-due query and bumped leases only look at active and
deferred recipients) is its retention end, ``inf`` for ever. The sweep's query is then the
``recipients_due`` index range ``state = 'held' AND next_attempt <= now``. What happens at the
end is the recipient's ``on_expiry`` (schema version 4).

Everything here is pure (no clock, no I/O): :func:`plan_expiry` decides what the end of a
retention does to one message, :func:`next_sweep` when a worker looks again. The worker's
loop that applies them is :mod:`mailwarden.queue.sweeper`.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mailwarden.delivery.errors import DeliveryReply
from mailwarden.smtp import replies
from mailwarden.spool.operations import MessageChange, RecipientUpdate
from mailwarden.spool.records import SpoolRecord
from mailwarden.spool.states import FINAL, RecipientState

FOREVER = math.inf  # a retention (and a retention end) that never passes
DEFAULT_RETENTION = 30 * 86400.0
"""30 days: long enough for someone to review a quarantine across a holiday, and bounded, so a
quarantine nobody looks at does not fill the spool (an operator who wants a hold kept until
released says so: ``"forever"``)."""
DEFAULT_SWEEP_INTERVAL = 60.0  # seconds between a worker's looks for ended retentions

EXPIRED_REASON = "retention of the hold ended"

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_TEXT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


class OnExpiry(enum.StrEnum):
    """What the end of a retention does to the recipients still held."""

    DISCARD = "discard"  # final, silently: no DSN
    BOUNCE = "bounce"  # final, with a DSN to the sender (RFC 3464, NOTIFY permitting)


def parse_retention(value: object) -> float:
    """Seconds from ``3600``, ``"90m"``, ``"7d"`` (units s, m, h, d); ``0``, ``"0"`` and
    ``"forever"`` give :data:`FOREVER` (kept until released). Raises ValueError otherwise
    (negative, not a number, an unknown unit)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and value.strip().lower() == "forever":
        return FOREVER
    elif isinstance(value, str) and (found := _TEXT.match(value)):
        seconds = float(found[1]) * _UNITS[found[2] or "s"]
    else:
        raise ValueError(
            "a retention is seconds (3600), a number with a unit s, m, h or d ('7d'),"
            f" or 0 / 'forever' (until released), got {value!r}"
        )
    if math.isnan(seconds) or seconds < 0:
        raise ValueError(f"a retention must be 0 (forever) or more seconds, got {value!r}")
    return FOREVER if seconds == 0 else seconds


def parse_on_expiry(value: object) -> OnExpiry:
    """``"discard"`` or ``"bounce"``; raises ValueError otherwise."""
    try:
        return OnExpiry(value)
    except ValueError:
        raise ValueError(f"on_expiry must be 'discard' or 'bounce', got {value!r}") from None


@dataclass(frozen=True, slots=True)
class HoldTerms:
    """The terms of one hold: the retention (seconds, :data:`FOREVER`) and what its end does."""

    retention: float = DEFAULT_RETENTION
    on_expiry: OnExpiry = OnExpiry.DISCARD

    def __post_init__(self) -> None:
        if math.isnan(self.retention) or self.retention <= 0:
            raise ValueError(f"a retention must be > 0 seconds or FOREVER, got {self.retention}")
        parse_on_expiry(self.on_expiry)  # raises ValueError for anything else

    def until(self, held_at: float) -> float:
        """The retention end of a hold made at ``held_at``."""
        return held_at + self.retention  # inf + t is inf: for ever


def retention_end(state: RecipientState, next_attempt: float | None) -> float | None:
    """When a recipient's retention ends (:data:`FOREVER` for ever), None if it is not held."""
    if state is not RecipientState.HELD or next_attempt is None:
        return None
    return next_attempt


def expiry_reply() -> DeliveryReply:
    """What a bounced-on-expiry recipient's DSN says: ours, not a remote's."""
    reply = replies.HOLD_EXPIRED
    return DeliveryReply(reply.code, reply.enhanced, reply.text, remote=False)


# Builds the DSN for the bounced recipients (as queue.operations.DsnMaker): (message, the
# positions bounced, the reply) -> the record to queue, or None when none is due.
DsnFor = Callable[[SpoolRecord, Sequence[int], DeliveryReply], SpoolRecord | None]


@dataclass(frozen=True, slots=True)
class Expiry:
    """What the end of retentions does to one message: the change to write, and the counts
    for its log line."""

    change: MessageChange
    discarded: int
    bounced: int


def plan_expiry(message: SpoolRecord, now: float, make_dsn: DsnFor) -> Expiry | None:
    """The held recipients of ``message`` whose retention ended at or before ``now`` become
    discarded or bounced (their ``on_expiry``), the bounced ones with one DSN; the message
    leaves the spool when every recipient is final after that. None when no retention ended
    (or a worker holds a live lease on the message: it is looked at again at the next sweep,
    so an expiry never races a delivery's own record)."""
    if message.lease_until is not None and message.lease_until > now:
        return None
    ended = [
        position
        for position, r in enumerate(message.recipients)
        if r.state is RecipientState.HELD and r.next_attempt is not None and r.next_attempt <= now
    ]
    if not ended:
        return None
    bounce = [p for p in ended if message.recipients[p].on_expiry == OnExpiry.BOUNCE]
    reply = expiry_reply()
    updates = tuple(
        RecipientUpdate(p, RecipientState.BOUNCED, reply.text, last_reply=str(reply))
        if p in bounce
        else RecipientUpdate(p, RecipientState.DISCARDED, EXPIRED_REASON)
        for p in ended
    )
    after = {u.position: u.state for u in updates}
    remove = all(after.get(p, r.state) in FINAL for p, r in enumerate(message.recipients))
    queued = make_dsn(message, bounce, reply) if bounce else None
    change = MessageChange(message.id, updates, remove=remove, queue=queued)
    return Expiry(change, len(ended) - len(bounce), len(bounce))


MIN_GAP = 0.25  # seconds between two sweeps at least, unless a backlog is worked through


def next_sweep(now: float, *, interval: float, earliest_end: float | None, backlog: bool) -> float:
    """When a worker next looks for ended retentions: at once while the last sweep stopped at
    its batch limit (``backlog``), else at the earliest retention end of its shard but at most
    ``interval`` from ``now`` (a hold made meanwhile may end sooner: it waits one interval at
    most), and never sooner than :data:`MIN_GAP` (ends a few milliseconds apart go in one
    sweep; an end already past, which a sweep could not take, is no reason to spin)."""
    if backlog:
        return now
    later = now + interval
    if earliest_end is None:
        return later
    return min(later, max(earliest_end, now + MIN_GAP))
