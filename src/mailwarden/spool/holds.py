"""The spool side of quarantine retention: finding held recipients whose retention ended and
writing what their end does, in one transaction of the store's commit thread.

A held recipient's ``next_attempt`` is its retention end (:mod:`mailwarden.queue.retention`),
so the held ones due are one range of the ``recipients_due`` index, ``(state, next_attempt)``:
the sweep reads only what ended, never every held recipient. A message with a live lease is
left for the next sweep (its delivery records its own outcome). What to do with each message
is decided by the caller's ``decide`` (the queue's pure :func:`plan_expiry`); the change is
written as an operator's is (:func:`mailwarden.spool.operations.apply_change`), so a DSN is
queued in the same transaction as the bounce that calls for it, and a message whose
recipients are now all final leaves the spool in it.
"""

from __future__ import annotations

import functools
import math
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mailwarden.spool.events import (
    MessageQueued,
    MessageRemoved,
    RecipientStateChanged,
    SpoolEvent,
)
from mailwarden.spool.operations import MessageChange, apply_change, original, read_records
from mailwarden.spool.records import SpoolRecord
from mailwarden.spool.states import RecipientState

_HELD = RecipientState.HELD.value

EXPIRED_IDS = """
SELECT DISTINCT r.message_id FROM recipients AS r JOIN messages AS m ON m.id = r.message_id
WHERE r.state = :held AND r.next_attempt <= :now
  AND (m.lease_until IS NULL OR m.lease_until <= :now)
LIMIT :limit
"""

# (message, a reader of its stored bytes taking max_body) -> the change, or None
Decide = Callable[[SpoolRecord, Callable[[int | None], bytes]], MessageChange | None]


@dataclass(slots=True)
class Swept:
    """What one sweep changed, the spill files to unlink after its commit, whether it stopped
    at its limit (more may have ended), and the earliest retention end left (None: none)."""

    changed: list[tuple[SpoolRecord, MessageChange]] = field(default_factory=list)
    unlink: list[Path] = field(default_factory=list)
    more: bool = False
    earliest_end: float | None = None

    def events(self) -> list[SpoolEvent]:
        """The events of the sweep, for after its commit."""
        found: list[SpoolEvent] = []
        for message, change in self.changed:
            if change.queue is not None:
                found.append(MessageQueued(change.queue))
            for update in change.updates:
                recipient = message.recipients[update.position]
                found.append(
                    RecipientStateChanged(
                        message.id,
                        update.position,
                        recipient.address,
                        update.state,
                        update.reason,
                        recipient.retry_count,
                        recipient.next_attempt or 0.0,
                        update.last_reply or recipient.last_reply,
                    )
                )
            if change.remove:
                found.append(MessageRemoved(message.id, "expired"))
        return found


def expire(
    db: sqlite3.Connection, spool_dir: Path, now: float, decide: Decide, *, limit: int
) -> Swept:
    """In the caller's transaction: up to ``limit`` messages with a held recipient whose
    retention ended at or before ``now`` (and no live lease), each changed as ``decide``
    says."""
    swept = Swept()
    ids = [row[0] for row in db.execute(EXPIRED_IDS, {"held": _HELD, "now": now, "limit": limit})]
    swept.more = len(ids) >= limit
    for message in read_records(db, spool_dir, ids) if ids else ():
        change = decide(message, functools.partial(_original, db, spool_dir, message.id))
        if change is None:
            continue
        unlink = apply_change(db, spool_dir, change)
        if unlink is not None:
            swept.unlink.append(unlink)
        swept.changed.append((message, change))
    swept.earliest_end = earliest_end(db, now)
    return swept


def _original(
    db: sqlite3.Connection, spool_dir: Path, message_id: str, max_body: int | None
) -> bytes:
    return original(db, spool_dir, message_id, max_body=max_body)


def earliest_end(db: sqlite3.Connection, now: float) -> float | None:
    """The earliest retention end of a held recipient of a message no live lease holds, or
    None when there is none or every one is kept for ever. The index gives the held ones in
    order of their end, so the scan stops at the first not being delivered; a message being
    delivered is not waited for (its end is past: the sweep would run again at once for as
    long as the delivery lasts), the next sweep of the interval finds it."""
    row = db.execute(
        "SELECT r.next_attempt FROM recipients AS r JOIN messages AS m ON m.id = r.message_id"
        " WHERE r.state = ? AND (m.lease_until IS NULL OR m.lease_until <= ?)"
        " ORDER BY r.next_attempt LIMIT 1",
        (_HELD, now),
    ).fetchone()
    if row is None or row[0] is None or math.isinf(row[0]):
        return None
    return float(row[0])
