"""The delivery side of a shard: leasing due messages with their bytes, and recording what
attempts did to them, many attempts per transaction.

These functions run in the store's commit thread inside one IMMEDIATE transaction (see
:meth:`SpoolStore._transaction`), so they never interleave with a group commit. Recording is
batched like commits are: one transaction (one WAL fsync) for every outcome that arrived
while the previous batch was being written. A bounce the outcome queues goes in the same
transaction as the state that caused it, and a message leaves the spool in that transaction
only once every recipient is final: a crash at any instant leaves either the old states
(the attempt is redone: at-least-once) or the new ones with their bounce.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mailwarden.spool.reader import body_file_path
from mailwarden.spool.records import SpooledRecipient, SpoolRecord
from mailwarden.spool.rows import (
    INSERT_MESSAGE,
    INSERT_RECIPIENT,
    loads,
    message_row,
    recipient_rows,
)
from mailwarden.spool.states import DELIVERABLE, FINAL, RecipientState


@dataclass(frozen=True, slots=True)
class RecipientOutcome:
    """What one attempt did to one recipient (``position`` in RCPT order)."""

    position: int
    state: RecipientState
    reason: str = ""
    last_reply: str = ""
    next_attempt: float | None = None  # kept as it is when None (held: the retention end)
    count_attempt: bool = False  # one more retry on the recipient's count
    delay_notified: bool | None = None  # a delay DSN went out now (None: unchanged)
    on_expiry: str | None = None  # held: what the end of its retention does (None: unchanged)


@dataclass(frozen=True, slots=True)
class AttemptOutcome:
    """Every recipient outcome of one message's round of attempts, and the messages it queues
    (DSNs), recorded together; the lease ends with it."""

    message_id: str
    recipients: tuple[RecipientOutcome, ...]
    new_records: tuple[SpoolRecord, ...] = ()
    removal_reason: str = "delivered"


@dataclass(frozen=True, slots=True)
class LeasedMessage:
    """A leased message: its envelope with every recipient (index = position) and its bytes."""

    record: SpoolRecord
    headers: bytes
    body: bytes | None
    body_path: Path | None

    def message_bytes(self) -> bytes:
        """The message exactly as received (headers then body). Raises OSError if the spill
        file cannot be read."""
        if self.body_path is None:
            return self.headers + (self.body or b"")
        return self.headers + self.body_path.read_bytes()


# Due: a deliverable recipient whose next attempt has come (index recipients_due), of a
# message no live lease holds. One UPDATE under the write lock: leasing is atomic. Shared by
# SpoolStore.lease_due (ids only) and lease_and_load (ids, then the rows). The scan follows
# the index (earliest due first) and stops at ``limit``; no ORDER BY, which would read every
# due recipient of the shard for each lease.
DUE_IDS = """
UPDATE messages SET leased_by = :owner, lease_until = :until
WHERE id IN (
    SELECT DISTINCT r.message_id FROM recipients AS r JOIN messages AS m ON m.id = r.message_id
    WHERE r.state IN (:s0, :s1) AND r.next_attempt <= :now
      AND (m.lease_until IS NULL OR m.lease_until <= :now)
    LIMIT :limit
)
RETURNING id
"""
# A leased message's due recipients are next due when its lease ends: that is when another
# delivery may take it over. Moving their next attempt there keeps them out of the index
# range the next lease scans (with thousands of messages in flight, that scan otherwise
# steps over every one of them each time). The lease check above still decides; this only
# spares the work. Whoever ends or extends a lease moves those recipients on (move_bumped).
# Those moves name their messages: "+state" keeps SQLite from reading them through
# recipients_due, whose state range holds every deliverable recipient of the shard (a
# deferred queue of 100,000 would be read once per batch), so that the primary key's
# message_id seeks are what it uses.
_DELIVERABLE = tuple(sorted(state.value for state in DELIVERABLE))


def lease(db: sqlite3.Connection, parameters: dict[str, object]) -> list[str]:
    """Lease with DUE_IDS and ``parameters`` (owner, until, now, limit, s0, s1), and move the
    leased messages' due recipients to the lease's end; the leased ids, sorted."""
    ids = sorted(row[0] for row in db.execute(DUE_IDS, parameters).fetchall())
    if ids:
        db.execute(
            "UPDATE recipients SET next_attempt = ?"
            f" WHERE message_id IN ({','.join('?' * len(ids))})"
            " AND +state IN (?, ?) AND next_attempt <= ?",
            [parameters["until"], *ids, *_DELIVERABLE, parameters["now"]],
        )
    return ids


def move_bumped(
    db: sqlite3.Connection, messages: str, arguments: Sequence, *, to: float | None = None
) -> None:
    """The due recipients of the leased messages whose ids ``messages`` (SQL, with
    ``arguments``) selects, waiting for their lease's end: due at ``to`` (the lease is
    extended to ``to``), or at once when ``to`` is None (the lease ends early): their next
    attempt goes back to the message's arrival, a time that is past on any clock and that
    no due recipient can be earlier than. Before the lease itself changes. (A recipient that
    was not due when leased and whose next attempt is the lease's end to the microsecond
    moves too: due early, never late.)"""
    target = "(SELECT received_at FROM messages WHERE id = recipients.message_id)"
    db.execute(
        f"UPDATE recipients SET next_attempt = {target if to is None else '?'}"
        f" WHERE message_id IN ({messages}) AND +state IN (?, ?) AND next_attempt = ("
        " SELECT lease_until FROM messages WHERE id = recipients.message_id)",
        [*(() if to is None else (to,)), *arguments, *_DELIVERABLE],
    )


_ENVELOPE = (
    "id, server_id, received_at, sender, sender_params, client_ip, client_port, helo, tls,"
    " auth, metadata, headers, body, body_file, size, retry_count, next_attempt"
)
_RECIPIENT = (
    "message_id, position, address, params, metadata, state, reason, retry_count,"
    " next_attempt, last_reply, delay_notified"
)


def lease_and_load(
    db: sqlite3.Connection,
    spool_dir: Path,
    owner: str,
    *,
    now: float,
    until: float,
    limit: int,
) -> list[LeasedMessage]:
    """Lease up to ``limit`` due messages to ``owner`` and read them, oldest first."""
    parameters = {
        "owner": owner,
        "until": until,
        "now": now,
        "limit": limit,
        "s0": _DELIVERABLE[0],
        "s1": _DELIVERABLE[1],
    }
    ids = sorted(row[0] for row in db.execute(DUE_IDS, parameters).fetchall())
    if not ids:
        return []
    marks = ",".join("?" * len(ids))
    recipients: dict[str, list[SpooledRecipient]] = {}
    for row in db.execute(
        f"SELECT {_RECIPIENT} FROM recipients WHERE message_id IN ({marks})"
        " ORDER BY message_id, position",
        ids,
    ):
        recipients.setdefault(row[0], []).append(_recipient(row))
    leased = []
    for row in db.execute(f"SELECT {_ENVELOPE} FROM messages WHERE id IN ({marks})", ids):
        leased.append(_leased(row, recipients.get(row[0], []), spool_dir, owner, until))
    leased.sort(key=lambda message: message.record.id)
    # After the rows are read, which carry the real next attempts: the lease's end.
    db.execute(
        f"UPDATE recipients SET next_attempt = ? WHERE message_id IN ({marks})"
        " AND +state IN (?, ?) AND next_attempt <= ?",
        [until, *ids, *_DELIVERABLE, now],
    )
    return leased


def _recipient(row: tuple) -> SpooledRecipient:
    return SpooledRecipient(
        address=row[2],
        params=loads(row[3]),
        metadata=loads(row[4]),
        state=row[5],
        reason=row[6],
        retry_count=row[7],
        next_attempt=row[8],
        last_reply=row[9],
        delay_notified=bool(row[10]),
    )


def _leased(
    row: tuple, recipients: list[SpooledRecipient], spool_dir: Path, owner: str, until: float
) -> LeasedMessage:
    body_path = body_file_path(spool_dir, row[13]) if row[13] else None
    record = SpoolRecord(
        id=row[0],
        server_id=row[1],
        received_at=row[2],
        sender=row[3],
        sender_params=loads(row[4]),
        client_ip=row[5],
        client_port=row[6],
        helo=row[7],
        tls=json.loads(row[8]) if row[8] else None,
        auth=json.loads(row[9]) if row[9] else None,
        metadata=loads(row[10]),
        body_file=body_path,
        size=row[14],
        recipients=tuple(recipients),
        retry_count=row[15],
        next_attempt=row[16],
        leased_by=owner,
        lease_until=until,
    )
    return LeasedMessage(record, row[11], row[12], body_path)


_SET_STATE = """
UPDATE recipients
SET state = ?, reason = ?, retry_count = retry_count + ?,
    next_attempt = coalesce(?, next_attempt), last_reply = ?,
    delay_notified = coalesce(?, delay_notified), on_expiry = coalesce(?, on_expiry)
WHERE message_id = ? AND position = ?
"""

_FINAL_MARKS = ",".join("?" * len(FINAL))


def apply_outcomes(
    db: sqlite3.Connection, spool_dir: Path, owner: str, outcomes: Sequence[AttemptOutcome]
) -> list[tuple[str, str | None]]:
    """Record ``outcomes`` (in the caller's transaction): recipient states, queued DSNs, the
    removal of messages whose recipients are all final, the end of ``owner``'s leases.
    Returns the removed messages as (id, spill file as the row named it)."""
    ids = [outcome.message_id for outcome in outcomes]
    marks = ",".join("?" * len(ids))
    # First, while only the lease's own move put a next attempt at its end: recipients the
    # outcomes leave alone (given back at shutdown) are due again now, not at the end of the
    # lease that is ending. The outcomes' next attempts are written after.
    held = f"SELECT id FROM messages WHERE id IN ({marks}) AND leased_by = ?"
    move_bumped(db, held, [*ids, owner])
    db.executemany(
        _SET_STATE,
        [
            (
                r.state.value,
                r.reason,
                int(r.count_attempt),
                r.next_attempt,
                r.last_reply,
                None if r.delay_notified is None else int(r.delay_notified),
                r.on_expiry,
                outcome.message_id,
                r.position,
            )
            for outcome in outcomes
            for r in outcome.recipients
        ],
    )
    new_records = [record for outcome in outcomes for record in outcome.new_records]
    if new_records:
        db.executemany(INSERT_MESSAGE, [message_row(r, spool_dir) for r in new_records])
        db.executemany(INSERT_RECIPIENT, [row for r in new_records for row in recipient_rows(r)])
    finals = sorted(state.value for state in FINAL)
    done = db.execute(
        f"SELECT id, body_file FROM messages WHERE id IN ({marks}) AND NOT EXISTS ("
        " SELECT 1 FROM recipients WHERE message_id = messages.id"
        f" AND state NOT IN ({_FINAL_MARKS}))",
        [*ids, *finals],
    ).fetchall()
    if done:
        db.executemany("DELETE FROM messages WHERE id = ?", [(row[0],) for row in done])
    db.executemany(
        "UPDATE messages SET leased_by = NULL, lease_until = NULL WHERE id = ? AND leased_by = ?",
        [(message_id, owner) for message_id in ids],
    )
    return [(row[0], row[1]) for row in done]


def next_due(db: sqlite3.Connection, now: float) -> float | None:
    """When something next falls due after ``now``: the earliest later next attempt of a
    deliverable recipient, a leased message's at its lease's end (see ``lease``); None when
    nothing waits. The queue manager asks this once nothing more is due at ``now``, so a
    recipient due at ``now`` already belongs to a leased message; one index seek per state,
    whatever the number of messages in flight."""
    found = [
        row[0]
        for state in _DELIVERABLE
        for row in db.execute(
            "SELECT next_attempt FROM recipients WHERE state = ? AND next_attempt > ?"
            " ORDER BY next_attempt LIMIT 1",
            (state, now),
        )
    ]
    return float(min(found)) if found else None


__all__ = [
    "AttemptOutcome",
    "LeasedMessage",
    "RecipientOutcome",
    "RecipientState",
    "apply_outcomes",
    "lease_and_load",
    "next_due",
]
