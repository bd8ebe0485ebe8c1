"""Reading the spool from outside the server (CLI, tests): every shard, read-only.

Spill files are found in the spool the reader is given, whatever path their row names: rows
name them relative to the spool (``data/shard-0-ID``), rows written by older versions by an
absolute path that no longer holds once the spool has moved, so that one is taken by its file
name inside ``data/``.

Shards are read a page at a time (keyset pagination on the message id, which is time-ordered),
so listing 100,000 queued messages holds one page in memory. The reader never migrates a shard
(the node does, at start, and an older node may still be writing it): it reads version 1 and 2
alike, and refuses a shard newer than it knows with a SpoolError.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from mailwarden.spool import schema
from mailwarden.spool.records import SpooledRecipient, SpoolRecord
from mailwarden.spool.rows import loads

# The one record model (spool/records.py), under the names readers have always used.
QueuedRecipient = SpooledRecipient
QueuedMessage = SpoolRecord

# Messages read per query: memory stays bounded by a page, whatever the shard holds.
PAGE_SIZE = 500


SPILL_DIRECTORY = "data"


def spill_file_name(stored: str) -> str:
    """The file name (inside the spool's ``data/``) of a row's ``body_file``."""
    return PurePosixPath(stored).name


def body_file_path(spool_dir: Path, stored: str) -> Path:
    """Where the spill file a row names is, in the spool at ``spool_dir`` (see the module)."""
    return Path(spool_dir) / SPILL_DIRECTORY / spill_file_name(stored)


def shard_paths(spool_dir: Path) -> list[Path]:
    return sorted(Path(spool_dir).glob("shard-*.db"))


Trace = Callable[[str], None]


def _connect(path: Path, trace: Trace | None = None) -> tuple[sqlite3.Connection, int]:
    """The shard at ``path`` and its schema version. Raises SpoolError if it is newer than
    this code knows."""
    # Not read-only mode: a reader must be able to see the WAL the server writes.
    db = sqlite3.connect(path, timeout=10.0)
    db.row_factory = sqlite3.Row
    if trace is not None:
        db.set_trace_callback(trace)
    try:
        version = schema.shard_version(db)
        schema.check_known(path, version)
    except BaseException:
        db.close()
        raise
    return db, version


def iter_messages(
    spool_dir: Path, *, page_size: int = PAGE_SIZE, trace: Trace | None = None
) -> Iterator[SpoolRecord]:
    """Every committed message in every shard, oldest first within a shard, read ``page_size``
    messages per query (two queries a page: envelopes, then their recipients). ``trace``, if
    given, sees every SQL statement run (tests count them)."""
    for path in shard_paths(spool_dir):
        db, version = _connect(path, trace)
        try:
            if version == 0:
                continue  # an empty database: nothing was ever queued in it
            yield from _pages(db, version, spool_dir, page_size)
        finally:
            db.close()


def _pages(
    db: sqlite3.Connection, version: int, spool_dir: Path, page_size: int
) -> Iterator[SpoolRecord]:
    after = ""
    while True:
        rows = db.execute(
            f"SELECT {_envelope(version)} FROM messages WHERE id > ? ORDER BY id LIMIT ?",
            (after, page_size),
        ).fetchall()
        if not rows:
            return
        first, last = rows[0]["id"], rows[-1]["id"]
        recipients: dict[str, list[SpooledRecipient]] = {}
        for row in db.execute(
            f"SELECT {_recipient_columns(version)} FROM recipients"
            " WHERE message_id BETWEEN ? AND ?"
            " ORDER BY message_id, position",
            (first, last),
        ):
            recipients.setdefault(row["message_id"], []).append(_recipient(row))
        for row in rows:
            yield _message(row, recipients.get(row["id"], ()), spool_dir)
        if len(rows) < page_size:
            return
        after = last


def find_message(spool_dir: Path, message_id: str) -> SpoolRecord | None:
    """The queued message with this id (in whichever shard holds it), or None."""
    for path in shard_paths(spool_dir):
        db, version = _connect(path)
        try:
            if version == 0:
                continue
            row = db.execute(
                f"SELECT {_envelope(version)} FROM messages WHERE id = ?", (message_id,)
            ).fetchone()
            if row is None:
                continue
            rows = db.execute(
                f"SELECT {_recipient_columns(version)} FROM recipients"
                " WHERE message_id = ? ORDER BY position",
                (message_id,),
            )
            return _message(row, [_recipient(r) for r in rows], spool_dir)
        finally:
            db.close()
    return None


@dataclass(frozen=True, slots=True)
class QueueSummary:
    """What a listing needs before its first page (a table's column widths), computed by
    SQLite over every shard without loading any message."""

    count: int = 0
    longest_id: int = 0
    largest_size: int = 0
    longest_state: int = 0  # the longest recipient state


def queue_summary(spool_dir: Path) -> QueueSummary:
    count = longest_id = largest = longest_state = 0
    for path in shard_paths(spool_dir):
        db, version = _connect(path)
        try:
            if version == 0:
                continue
            n, ids, size = db.execute(
                "SELECT count(*), max(length(id)), max(size) FROM messages"
            ).fetchone()
            (states,) = db.execute("SELECT max(length(state)) FROM recipients").fetchone()
        finally:
            db.close()
        count += n
        longest_id = max(longest_id, ids or 0)
        largest = max(largest, size or 0)
        # "mixed" (recipients in different states) is no longer than the column's header.
        longest_state = max(longest_state, states or 0)
    return QueueSummary(count, longest_id, largest, longest_state)


# Everything but the message bytes, which can be large (read_message_bytes reads those).
_ENVELOPE = (
    "id, server_id, received_at, sender, sender_params, client_ip, client_port, helo, tls,"
    " auth, metadata, body_file, size, retry_count, next_attempt"
)
_RECIPIENT = (
    "message_id, address, params, metadata, state, reason, retry_count, next_attempt, last_reply"
)


def _recipient_columns(version: int) -> str:
    # Version 2 and older shards have no delay_notified column, version 3 no on_expiry.
    notified = "delay_notified" if version >= 3 else "0 AS delay_notified"
    expiry = "on_expiry" if version >= 4 else "'discard' AS on_expiry"
    columns = _RECIPIENT
    if version < 4:
        # Held before retention existed: kept until released (what the v4 migration stores),
        # not "ended" at a next attempt that meant nothing while held. 9e999 is SQLite's inf.
        columns = columns.replace(
            " next_attempt,",
            " CASE WHEN state = 'held' THEN 9e999 ELSE next_attempt END AS next_attempt,",
        )
    return f"{columns}, {notified}, {expiry}"


def _envelope(version: int) -> str:
    # Version 1 shards (an older node may still be writing one) have no lease columns.
    leases = "leased_by, lease_until" if version >= 2 else "NULL AS leased_by, NULL AS lease_until"
    return f"{_ENVELOPE}, {leases}"


def _recipient(row: sqlite3.Row) -> SpooledRecipient:
    return SpooledRecipient(
        address=row["address"],
        params=loads(row["params"]),
        metadata=loads(row["metadata"]),
        state=row["state"],
        reason=row["reason"],
        retry_count=row["retry_count"],
        next_attempt=row["next_attempt"],
        last_reply=row["last_reply"],
        # Queries that do not ask for it (operator batches): the default.
        delay_notified="delay_notified" in row.keys() and bool(row["delay_notified"]),  # noqa: SIM118
        on_expiry=row["on_expiry"] if "on_expiry" in row.keys() else "discard",  # noqa: SIM118
    )


def _message(
    row: sqlite3.Row, recipients: Iterable[SpooledRecipient], spool_dir: Path
) -> SpoolRecord:
    body_file = row["body_file"]
    return SpoolRecord(
        id=row["id"],
        server_id=row["server_id"],
        received_at=row["received_at"],
        sender=row["sender"],
        sender_params=loads(row["sender_params"]),
        client_ip=row["client_ip"],
        client_port=row["client_port"],
        helo=row["helo"],
        tls=json.loads(row["tls"]) if row["tls"] else None,
        auth=json.loads(row["auth"]) if row["auth"] else None,
        metadata=loads(row["metadata"]),
        body_file=body_file_path(spool_dir, body_file) if body_file else None,
        size=row["size"],
        recipients=tuple(recipients),
        retry_count=row["retry_count"],
        next_attempt=row["next_attempt"],
        leased_by=row["leased_by"],
        lease_until=row["lease_until"],
    )


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """Where a queued message's bytes are: the header section, then the body in the row or
    in a spill file."""

    headers: bytes
    body: bytes | None
    body_path: Path | None

    def chunks(self, size: int = 1 << 20) -> Iterator[bytes]:
        """The message exactly as delivery will send it, in pieces of at most ``size`` bytes
        past the headers (a spilled body may be far too large to hold in memory)."""
        yield self.headers
        if self.body_path is None:
            if self.body:
                yield self.body
            return
        with open(self.body_path, "rb") as body:
            while chunk := body.read(size):
                yield chunk


def stored_message(spool_dir: Path, message_id: str) -> StoredMessage | None:
    """Where the bytes of message ``message_id`` are, or None if it is not queued."""
    for path in shard_paths(spool_dir):
        db, version = _connect(path)
        try:
            if version == 0:
                continue
            row = db.execute(
                "SELECT headers, body, body_file FROM messages WHERE id = ?", (message_id,)
            ).fetchone()
        finally:
            db.close()
        if row is None:
            continue
        body_file = row["body_file"]
        return StoredMessage(
            row["headers"],
            row["body"],
            body_file_path(spool_dir, body_file) if body_file else None,
        )
    return None


def read_message_bytes(spool_dir: Path, message_id: str) -> bytes | None:
    """The stored message exactly as delivery will send it, or None if it is not queued.

    Raises OSError if the spill file that holds its body cannot be read."""
    stored = stored_message(spool_dir, message_id)
    return b"".join(stored.chunks()) if stored is not None else None
