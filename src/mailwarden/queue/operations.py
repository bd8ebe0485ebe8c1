"""Operator actions on queued recipients: hold, release, delete, retry now, bounce now.

What an action does to one message is a pure function (:func:`plan`) of the message as it is
and the positions of the recipients the operator's filters matched:

- ``hold``: active or deferred recipients become ``held`` (quarantine: never attempted until
  released) for the hold's retention, from now (:class:`~mailwarden.queue.retention.HoldTerms`;
  their retention end is stored as their next attempt); with terms the operator gave
  (``explicit``), recipients already held take the new terms too.
- ``release``: held recipients become ``active``, due now.
- ``retry-now``: active or deferred recipients are due now (state, reason and retry count kept:
  an operator's flush is not a failed attempt).
- ``delete``: the message leaves the spool when every recipient is matched or already final;
  otherwise the matched ones are ``discarded`` (final: never delivered) and the rest stay.
- ``bounce``: active, deferred or held recipients become ``bounced`` with the operator's reply
  (550 5.0.0 unless a reason is given), and the DSN to the sender (RFC 3464, built by
  :mod:`mailwarden.queue.bounces`) is queued in the same transaction, so a crash never leaves
  bounced recipients without their bounce or a bounce for recipients still queued.

A message left with only final recipients leaves the spool in the same transaction.

A message whose lease is live (``lease_until > now``) is being delivered by a worker right
now: it is skipped, and counted, unless ``force``. Forcing does not stop that delivery: the
worker still finishes its attempt, and when it records the outcome it overwrites a hold,
release or retry-now of the recipients it tried; a message deleted or bounced meanwhile may
still be delivered once. The lease is left alone, because clearing it would let a second
worker pick the message up while the first is still sending it (a duplicate).

:func:`run` applies an action to a spool from outside the node: a read-only pass finds the
matching messages, then the shards are changed in batches, taking turns, one IMMEDIATE
transaction per batch
(:class:`mailwarden.spool.operations.ShardWriter`), re-reading the batch under the write lock
and planning again on what it finds.
"""

from __future__ import annotations

import contextlib
import enum
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from mailwarden.delivery.errors import DeliveryReply
from mailwarden.queue.filters import FilterContext, QueueFilter, lease_live
from mailwarden.queue.retention import HoldTerms
from mailwarden.smtp import replies
from mailwarden.spool.operations import (
    MessageChange,
    RecipientUpdate,
    ShardWriter,
    scan,
    scan_counts,
)
from mailwarden.spool.records import SpooledRecipient, SpoolRecord
from mailwarden.spool.states import DELIVERABLE, FINAL, RecipientState

BATCH_SIZE = 200  # messages per transaction: a worker waits at most one batch for its commit


class Action(enum.StrEnum):
    HOLD = "hold"
    RELEASE = "release"
    DELETE = "delete"
    BOUNCE = "bounce"
    RETRY_NOW = "retry-now"


HELD_BY_OPERATOR = "held by the operator"
DELETED_BY_OPERATOR = "deleted by the operator"

# Which stored states each action changes.
_APPLIES_TO: dict[Action, frozenset[RecipientState]] = {
    Action.HOLD: DELIVERABLE,
    Action.RELEASE: frozenset({RecipientState.HELD}),
    Action.RETRY_NOW: DELIVERABLE,
    Action.DELETE: frozenset(RecipientState) - FINAL,
    Action.BOUNCE: frozenset(RecipientState) - FINAL,
}

# Builds the DSN for the bounced recipients of a message: (message, its stored bytes, the
# positions bounced, the reply) -> the record to queue, or None when none is due.
DsnMaker = Callable[[SpoolRecord, bytes, Sequence[int], DeliveryReply], SpoolRecord | None]


def operator_bounce_reply(reason: str = "") -> DeliveryReply:
    """The reply a bounced recipient's DSN carries; ours, not a remote's (no Remote-MTA)."""
    reply = replies.OPERATOR_BOUNCE
    return DeliveryReply(reply.code, reply.enhanced, reason or reply.text, remote=False)


@dataclass(frozen=True, slots=True)
class Planned:
    """The change for one message (None: nothing to do) and how many matched recipients it
    changes."""

    change: MessageChange | None
    recipients: int = 0
    skipped_lease: bool = False


def plan(
    action: Action,
    message: SpoolRecord,
    positions: Sequence[int],
    *,
    now: float,
    force: bool = False,
    reason: str = "",
    original: Callable[[], bytes] | None = None,
    make_dsn: DsnMaker | None = None,
    hold: HoldTerms | None = None,
    explicit: bool = False,
) -> Planned:
    """What ``action`` does to the recipients at ``positions`` of ``message`` (see the
    module). ``original`` and ``make_dsn`` are needed for ``bounce`` only; ``hold`` is the
    terms of a ``hold`` (default: :class:`HoldTerms`), ``explicit`` when the operator gave
    them (held recipients then take them too)."""
    if not positions:
        return Planned(None)
    if lease_live(message, now) and not force:
        return Planned(None, skipped_lease=True)
    applies = _APPLIES_TO[action]
    if action is Action.HOLD and explicit:
        applies = applies | {RecipientState.HELD}
    chosen = [p for p in positions if message.recipients[p].state in applies]
    if not chosen:
        return Planned(None)
    terms = hold or HoldTerms()
    updates = tuple(_update(action, message.recipients[p], p, now, reason, terms) for p in chosen)
    after = {u.position: u.state for u in updates}
    states = [after.get(p, r.state) for p, r in enumerate(message.recipients)]
    remove = all(state in FINAL for state in states)
    if action is Action.DELETE and remove:
        updates = ()  # the message goes as a whole: nothing to record per recipient
    queued = None
    if action is Action.BOUNCE:
        if original is None or make_dsn is None:
            raise ValueError("bounce needs the original message and a DSN maker")
        queued = make_dsn(message, original(), chosen, operator_bounce_reply(reason))
    change = MessageChange(message.id, updates, remove=remove, queue=queued)
    return Planned(change, len(chosen))


def _update(
    action: Action,
    recipient: SpooledRecipient,
    position: int,
    now: float,
    reason: str,
    terms: HoldTerms,
) -> RecipientUpdate:
    if action is Action.HOLD:
        # A new retention for one already held keeps its reason unless a new one is given.
        kept = recipient.reason if recipient.state is RecipientState.HELD else HELD_BY_OPERATOR
        return RecipientUpdate(
            position,
            RecipientState.HELD,
            reason or kept,
            next_attempt=terms.until(now),
            on_expiry=terms.on_expiry.value,
        )
    if action is Action.RELEASE:
        return RecipientUpdate(position, RecipientState.ACTIVE, "", next_attempt=now)
    if action is Action.RETRY_NOW:
        return RecipientUpdate(position, recipient.state, recipient.reason, next_attempt=now)
    if action is Action.DELETE:
        return RecipientUpdate(position, RecipientState.DISCARDED, reason or DELETED_BY_OPERATOR)
    reply = operator_bounce_reply(reason)
    return RecipientUpdate(position, RecipientState.BOUNCED, reply.text, last_reply=str(reply))


# --- applying an action to a spool ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Selection:
    """What the filters match, found by a read-only pass: the ids per shard, and counts."""

    shards: dict[Path, list[str]] = field(default_factory=dict)
    messages: int = 0
    recipients: int = 0


def select(spool_dir: Path, query: QueueFilter, ctx: FilterContext) -> Selection:
    shards: dict[Path, list[str]] = {}
    messages = recipients = 0
    if query.empty:  # --all: every recipient matches, counted without reading the records
        for path, message_id, count in scan_counts(spool_dir):
            shards.setdefault(path, []).append(message_id)
            messages += 1
            recipients += count
        return Selection(shards, messages, recipients)
    for path, message in scan(spool_dir):
        positions = query.positions(message, ctx)
        if positions:
            shards.setdefault(path, []).append(message.id)
            messages += 1
            recipients += len(positions)
    return Selection(shards, messages, recipients)


@dataclass(slots=True)
class Outcome:
    """What an action did, for the operator's summary and ``--json``."""

    action: str
    messages: int = 0  # messages changed
    recipients: int = 0  # recipients changed
    removed: int = 0  # messages that left the spool
    bounces: list[str] = field(default_factory=list)  # ids of the DSNs queued
    skipped_lease: list[str] = field(default_factory=list)  # being delivered (live lease)
    unchanged: int = 0  # matched messages with no recipient the action applies to

    def document(self) -> dict[str, object]:
        return {
            "action": self.action,
            "messages": self.messages,
            "recipients": self.recipients,
            "removed": self.removed,
            "bounces": self.bounces,
            "skipped_lease": self.skipped_lease,
            "unchanged": self.unchanged,
        }


def run(
    spool_dir: Path,
    action: Action,
    query: QueueFilter,
    selection: Selection,
    *,
    route_hop: Callable[[str], str | None] = lambda domain: None,
    force: bool = False,
    reason: str = "",
    reporting_mta: str = "localhost",
    batch_size: int = BATCH_SIZE,
    clock: Callable[[], float] = time.time,
    progress: Callable[[int], None] = lambda done: None,
    hold: HoldTerms | None = None,
    explicit: bool = False,
) -> Outcome:
    """Apply ``action`` to the messages of ``selection``, each shard in batches of
    ``batch_size`` messages (the shards in turn), one IMMEDIATE transaction each;
    ``progress`` hears how many messages each batch handled; ``hold`` and ``explicit`` as
    :func:`plan` takes them. Raises SpoolError if a shard cannot be written: the batches
    committed before stay done, which the operator sees by listing again."""
    outcome = Outcome(action.value)
    ids = _DsnIds()
    # A DSN returns a message larger than the limit as its headers only: reading one octet
    # past it tells so, without reading a large body while holding the shard's write lock.
    max_body = None
    if action is Action.BOUNCE:
        from mailwarden.queue.bounces import RETURN_SIZE_LIMIT

        max_body = RETURN_SIZE_LIMIT + 1
    with contextlib.ExitStack() as stack:
        # The shards take turns, one batch each: every worker of the node gets mail to
        # deliver from the first batches on, rather than one shard's worker after another.
        work = [
            (stack.enter_context(ShardWriter(path, spool_dir)), message_ids)
            for path, message_ids in selection.shards.items()
        ]
        for start in range(0, max((len(listed) for _, listed in work), default=0), batch_size):
            for shard, message_ids in work:
                batch = message_ids[start : start + batch_size]
                if not batch:
                    continue
                with shard.transaction():
                    _apply_batch(
                        shard,
                        batch,
                        action,
                        query,
                        outcome,
                        ids,
                        route_hop=route_hop,
                        force=force,
                        reason=reason,
                        reporting_mta=reporting_mta,
                        now=clock(),
                        max_body=max_body,
                        hold=hold,
                        explicit=explicit,
                    )
                progress(len(batch))
    return outcome


def _apply_batch(
    shard: ShardWriter,
    batch: Sequence[str],
    action: Action,
    query: QueueFilter,
    outcome: Outcome,
    ids: _DsnIds,
    *,
    route_hop: Callable[[str], str | None],
    force: bool,
    reason: str,
    reporting_mta: str,
    now: float,
    max_body: int | None,
    hold: HoldTerms | None = None,
    explicit: bool = False,
) -> None:
    """One batch inside its transaction: read again under the write lock, plan, write."""
    ctx = FilterContext(now, route_hop)

    def make_dsn(
        m: SpoolRecord, data: bytes, positions: Sequence[int], reply: DeliveryReply
    ) -> SpoolRecord | None:
        return dsn_record(m, data, positions, reply, reporting_mta, now, ids.next())

    changes = []
    for message in shard.read(batch):
        planned = plan(
            action,
            message,
            query.positions(message, ctx),
            now=now,
            force=force,
            reason=reason,
            original=lambda m=message: shard.original(m.id, max_body=max_body),
            make_dsn=make_dsn,
            hold=hold,
            explicit=explicit,
        )
        _count(outcome, message, planned)
        if planned.change is not None:
            changes.append(planned.change)
    shard.apply_all(changes)


def _count(outcome: Outcome, message: SpoolRecord, planned: Planned) -> None:
    if planned.skipped_lease:
        outcome.skipped_lease.append(message.id)
        return
    change = planned.change
    if change is None:
        outcome.unchanged += 1
        return
    outcome.messages += 1
    outcome.recipients += planned.recipients
    outcome.removed += int(change.remove)
    if change.queue is not None:
        outcome.bounces.append(change.queue.id)


def dsn_record(
    message: SpoolRecord,
    original: bytes,
    positions: Sequence[int],
    reply: DeliveryReply,
    reporting_mta: str,
    now: float,
    new_id: str,
) -> SpoolRecord | None:
    """The DSN record for the recipients at ``positions``, bounced with ``reply`` outside a
    delivery attempt (an operator's bounce, the end of a hold's retention): RFC 3464 via
    queue.bounces, or None when none is due (null sender, NOTIFY excludes the recipients)."""
    from mailwarden.queue.bounces import DsnRecipient, bounce_record

    recipients = [
        DsnRecipient(
            address=message.recipients[p].address,
            original=message.recipients[p].params.get("ORCPT"),
            action="failed",
            reply=reply,
        )
        for p in positions
    ]
    record = bounce_record(
        message, original, recipients, reporting_mta=reporting_mta, now=now, new_id=new_id
    )
    if record is None:
        return None
    # Queued from this shard's transaction: its spill path (if any) must not name another's.
    return replace(record, body_fd=None)


class _DsnIds:
    """Ids for the DSNs this process queues, shaped as the node's (time-ordered hex:
    microseconds, a worker field, a counter); the worker field ``ff`` marks the CLI and the
    process id in the counter keeps two CLI runs apart."""

    def __init__(self) -> None:
        self._count = 0
        self._pid = os.getpid() & 0xFFFF

    def next(self) -> str:
        self._count += 1
        return f"{time.time_ns() // 1000:x}ff{self._pid:04x}{self._count & 0xFFFF:04x}"
