"""Reading the spool from outside the server (CLI, tests): every shard, read-only.

Spill files are found in the spool the reader is given, whatever path their row names: rows
name them relative to the spool (``data/shard-0-ID``), rows written by older versions by an
absolute path that no longer holds once the spool has moved, so that one is taken by its file
name inside ``data/``.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any


@dataclass(frozen=True, slots=True)
class QueuedRecipient:
    address: str
    state: str
    reason: str
    metadata: dict[str, Any]
    params: dict[str, Any]
    retry_count: int
    next_attempt: float
    last_reply: str = ""


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    id: str
    server_id: str
    received_at: float
    sender: str
    client_ip: str
    size: int
    metadata: dict[str, Any]
    tls: dict[str, Any] | None
    auth: dict[str, Any] | None
    recipients: tuple[QueuedRecipient, ...]
    sender_params: dict[str, Any] = field(default_factory=dict)
    client_port: int = 0
    helo: str | None = None
    retry_count: int = 0
    next_attempt: float = 0.0

    @property
    def state(self) -> str:
        """The message's overall state: the recipients' state when they agree, else mixed."""
        states = {r.state for r in self.recipients}
        return states.pop() if len(states) == 1 else "mixed"


SPILL_DIRECTORY = "data"


def spill_file_name(stored: str) -> str:
    """The file name (inside the spool's ``data/``) of a row's ``body_file``."""
    return PurePosixPath(stored).name


def body_file_path(spool_dir: Path, stored: str) -> Path:
    """Where the spill file a row names is, in the spool at ``spool_dir`` (see the module)."""
    return Path(spool_dir) / SPILL_DIRECTORY / spill_file_name(stored)


def shard_paths(spool_dir: Path) -> list[Path]:
    return sorted(Path(spool_dir).glob("shard-*.db"))


def _connect(path: Path) -> sqlite3.Connection:
    # Not read-only mode: a reader must be able to see the WAL the server writes.
    db = sqlite3.connect(path, timeout=10.0)
    db.row_factory = sqlite3.Row
    return db


def iter_messages(spool_dir: Path) -> Iterator[QueuedMessage]:
    """Every committed message in every shard, oldest first within a shard."""
    for path in shard_paths(spool_dir):
        db = _connect(path)
        try:
            recipients: dict[str, list[QueuedRecipient]] = {}
            for row in db.execute("SELECT * FROM recipients ORDER BY message_id, position"):
                recipients.setdefault(row["message_id"], []).append(_recipient(row))
            for row in db.execute(f"SELECT {_ENVELOPE} FROM messages ORDER BY received_at"):
                yield _message(row, recipients.get(row["id"], []))
        finally:
            db.close()


def find_message(spool_dir: Path, message_id: str) -> QueuedMessage | None:
    """The queued message with this id (in whichever shard holds it), or None."""
    for path in shard_paths(spool_dir):
        db = _connect(path)
        try:
            row = db.execute(
                f"SELECT {_ENVELOPE} FROM messages WHERE id = ?", (message_id,)
            ).fetchone()
            if row is None:
                continue
            rows = db.execute(
                "SELECT * FROM recipients WHERE message_id = ? ORDER BY position", (message_id,)
            )
            return _message(row, [_recipient(r) for r in rows])
        finally:
            db.close()
    return None


# Everything but the message bytes, which can be large (read_message_bytes reads those).
_ENVELOPE = (
    "id, server_id, received_at, sender, sender_params, client_ip, client_port, helo, tls,"
    " auth, metadata, size, retry_count, next_attempt"
)


def _recipient(row: sqlite3.Row) -> QueuedRecipient:
    return QueuedRecipient(
        row["address"],
        row["state"],
        row["reason"],
        json.loads(row["metadata"]),
        json.loads(row["params"]),
        row["retry_count"],
        row["next_attempt"],
        row["last_reply"],
    )


def _message(row: sqlite3.Row, recipients: list[QueuedRecipient]) -> QueuedMessage:
    return QueuedMessage(
        row["id"],
        row["server_id"],
        row["received_at"],
        row["sender"],
        row["client_ip"],
        row["size"],
        json.loads(row["metadata"]),
        json.loads(row["tls"]) if row["tls"] else None,
        json.loads(row["auth"]) if row["auth"] else None,
        tuple(recipients),
        sender_params=json.loads(row["sender_params"]),
        client_port=row["client_port"],
        helo=row["helo"],
        retry_count=row["retry_count"],
        next_attempt=row["next_attempt"],
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
        db = _connect(path)
        try:
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
