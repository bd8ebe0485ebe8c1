"""Operator changes to the spool shards from outside the node (``mailwarden queue update``).

The CLI is another process on a shard a worker writes: every change runs in a ``BEGIN
IMMEDIATE`` transaction, which takes SQLite's write lock first, so the worker's group commits,
leases and state changes and the operator's batch exclude each other (one waits, up to the busy
timeout, for the other). A batch reads its messages again under that lock before deciding, so
a decision is never taken on a state a worker changed since the operator's listing. Commits are
``synchronous=FULL`` like the node's: an operator's hold survives a power cut as a 250 does.

A removed message's spill file is unlinked after the commit (a crash in between leaves an
orphan file, which the node removes at its next start; the reverse order could lose the body of
a message still queued).

Shards of schema version 1 (an older node may still be writing one) have no lease columns, so
no change here could respect a delivery in progress: they are refused until this version's
node has opened (migrated) them.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from mailwarden.smtp import replies
from mailwarden.spool import schema
from mailwarden.spool.errors import SpoolError
from mailwarden.spool.reader import (
    _connect,
    _envelope,
    _message,
    _pages,
    _recipient,
    _recipient_columns,
    body_file_path,
    shard_paths,
)
from mailwarden.spool.records import SpooledRecipient, SpoolRecord
from mailwarden.spool.rows import INSERT_MESSAGE, INSERT_RECIPIENT, message_row, recipient_rows
from mailwarden.spool.states import RecipientState

# How long a batch waits for a worker's transaction to end before it fails (seconds).
BUSY_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class RecipientUpdate:
    """The new state of one recipient (``position`` in RCPT order); ``next_attempt`` (for a
    held one: its retention end), ``last_reply`` and ``on_expiry`` are kept when None."""

    position: int
    state: RecipientState
    reason: str
    next_attempt: float | None = None
    last_reply: str | None = None
    on_expiry: str | None = None


@dataclass(frozen=True, slots=True)
class MessageChange:
    """What one operator action does to one message, applied in one transaction: recipient
    updates, then (``remove``) the message leaves the spool, and ``queue`` (a DSN) is
    queued in the same shard."""

    message_id: str
    updates: tuple[RecipientUpdate, ...] = ()
    remove: bool = False
    queue: SpoolRecord | None = None


def scan(spool_dir: Path, page_size: int = 500) -> Iterator[tuple[Path, SpoolRecord]]:
    """Every queued message with the shard that holds it, a page at a time, read-only."""
    for path in shard_paths(spool_dir):
        db, version = _connect(path)
        try:
            if version == 0:
                continue
            for message in _pages(db, version, spool_dir, page_size):
                yield path, message
        finally:
            db.close()


def scan_counts(spool_dir: Path) -> Iterator[tuple[Path, str, int]]:
    """Every queued message's id and number of recipients, with its shard, read-only: what
    an operator action on the whole queue needs to know before it starts, without decoding
    a single record."""
    for path in shard_paths(spool_dir):
        db, version = _connect(path)
        try:
            if version == 0:
                continue
            rows = db.execute(
                "SELECT message_id, count(*) FROM recipients GROUP BY message_id"
                " ORDER BY message_id"
            )
            for message_id, recipients in rows:
                yield path, message_id, recipients
        finally:
            db.close()


class ShardWriter:
    """One shard opened for operator changes. Use as a context manager."""

    def __init__(self, path: Path, spool_dir: Path) -> None:
        self.path = path
        self.spool_dir = spool_dir
        self._unlink: list[Path] = []
        try:
            db = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None)
        except sqlite3.Error as error:
            raise SpoolError(replies.SPOOL_WRITE_FAILED, f"{path}: {error}") from error
        db.row_factory = sqlite3.Row
        try:
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            version = schema.shard_version(db)
            schema.check_known(path, version)
        except sqlite3.Error as error:
            db.close()
            raise SpoolError(replies.SPOOL_WRITE_FAILED, f"{path}: {error}") from error
        except BaseException:
            db.close()
            raise
        if version != schema.CURRENT_VERSION:
            db.close()
            raise SpoolError(
                replies.SPOOL_WRITE_FAILED,
                f"{path}: spool schema version {version}; start this Mailwarden's node once"
                f" to migrate it to version {schema.CURRENT_VERSION} before changing the queue",
            )
        self._db = db

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._db.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One IMMEDIATE transaction; spill files of removed messages go after its commit.
        Raises SpoolError if SQLite fails (the transaction then changed nothing)."""
        db = self._db
        self._unlink = []
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                raise
        except sqlite3.Error as error:
            raise SpoolError(replies.SPOOL_WRITE_FAILED, f"{self.path}: {error}") from error
        for path in self._unlink:
            path.unlink(missing_ok=True)

    def read(self, message_ids: Sequence[str]) -> list[SpoolRecord]:
        """The messages with these ids still in the shard, as they are now, in id order."""
        return read_records(self._db, self.spool_dir, message_ids)

    def original(self, message_id: str, *, max_body: int | None = None) -> bytes:
        """The stored bytes of a message, read in the transaction (see :func:`original`)."""
        return original(self._db, self.spool_dir, message_id, max_body=max_body)

    def apply(self, change: MessageChange) -> None:
        """Write ``change`` (inside :meth:`transaction`)."""
        unlink = apply_change(self._db, self.spool_dir, change)
        if unlink is not None:
            self._unlink.append(unlink)

    def apply_all(self, changes: Sequence[MessageChange]) -> None:
        """Write ``changes`` (inside :meth:`transaction`), one after the other."""
        for change in changes:
            self.apply(change)


# --- the same on any connection to a current shard, in its caller's transaction ---------------
# Shared by the CLI's batches (ShardWriter) and the node's retention sweep (spool/holds.py).


def _query(db: sqlite3.Connection, sql: str, parameters: Sequence[object]) -> list[sqlite3.Row]:
    cursor = db.cursor()
    cursor.row_factory = sqlite3.Row  # by name, whatever the connection's own factory is
    return cursor.execute(sql, tuple(parameters)).fetchall()


def read_records(
    db: sqlite3.Connection, spool_dir: Path, message_ids: Sequence[str]
) -> list[SpoolRecord]:
    """The messages with these ids still in the shard, as they are now, in id order."""
    marks = ",".join("?" * len(message_ids))
    rows = _query(
        db,
        f"SELECT {_envelope(schema.CURRENT_VERSION)} FROM messages WHERE id IN ({marks})"
        " ORDER BY id",
        message_ids,
    )
    recipients: dict[str, list[SpooledRecipient]] = {}
    for row in _query(
        db,
        f"SELECT {_recipient_columns(schema.CURRENT_VERSION)} FROM recipients"
        f" WHERE message_id IN ({marks}) ORDER BY message_id, position",
        message_ids,
    ):
        recipients.setdefault(row["message_id"], []).append(_recipient(row))
    return [_message(row, recipients.get(row["id"], ()), spool_dir) for row in rows]


def original(
    db: sqlite3.Connection, spool_dir: Path, message_id: str, *, max_body: int | None = None
) -> bytes:
    """The stored bytes of a message (as delivery sends them), read in the transaction;
    with ``max_body``, at most that many octets of the body (the write lock is held while
    this reads: a DSN that returns only the headers of a large message needs no more).
    Raises SpoolError if its spill file cannot be read."""
    rows = _query(db, "SELECT headers, body, body_file FROM messages WHERE id = ?", (message_id,))
    if not rows:
        raise KeyError(message_id)
    row = rows[0]
    headers = bytes(row["headers"])
    if not row["body_file"]:
        return headers + bytes(row["body"] or b"")[:max_body]
    path = body_file_path(spool_dir, row["body_file"])
    try:
        with open(path, "rb") as body:
            return headers + body.read(-1 if max_body is None else max_body)
    except OSError as error:
        raise SpoolError(
            replies.SPOOL_WRITE_FAILED, f"cannot read the body of message {message_id}: {error}"
        ) from error


def apply_change(db: sqlite3.Connection, spool_dir: Path, change: MessageChange) -> Path | None:
    """Write ``change`` in the caller's transaction. Returns the spill file of a removed
    message, for the caller to unlink after the commit (never before: a rollback would leave
    a queued message without its body)."""
    db.executemany(
        "UPDATE recipients SET state = ?, reason = ?,"
        " next_attempt = coalesce(?, next_attempt), last_reply = coalesce(?, last_reply),"
        " on_expiry = coalesce(?, on_expiry)"
        " WHERE message_id = ? AND position = ?",
        [
            (
                u.state.value,
                u.reason,
                u.next_attempt,
                u.last_reply,
                u.on_expiry,
                change.message_id,
                u.position,
            )
            for u in change.updates
        ],
    )
    if change.queue is not None:
        db.execute(INSERT_MESSAGE, message_row(change.queue, spool_dir))
        db.executemany(INSERT_RECIPIENT, recipient_rows(change.queue))
    if not change.remove:
        return None
    rows = _query(db, "SELECT body_file FROM messages WHERE id = ?", (change.message_id,))
    db.execute("DELETE FROM recipients WHERE message_id = ?", (change.message_id,))
    db.execute("DELETE FROM messages WHERE id = ?", (change.message_id,))
    if rows and rows[0]["body_file"]:
        return body_file_path(spool_dir, rows[0]["body_file"])
    return None
