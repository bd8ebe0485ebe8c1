"""Reading the spool from outside the server (CLI, tests): every shard, read-only."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
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

    @property
    def state(self) -> str:
        """The message's overall state: the recipients' state when they agree, else mixed."""
        states = {r.state for r in self.recipients}
        return states.pop() if len(states) == 1 else "mixed"


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
                recipients.setdefault(row["message_id"], []).append(
                    QueuedRecipient(
                        row["address"],
                        row["state"],
                        row["reason"],
                        json.loads(row["metadata"]),
                        json.loads(row["params"]),
                        row["retry_count"],
                        row["next_attempt"],
                    )
                )
            for row in db.execute(
                "SELECT id, server_id, received_at, sender, client_ip, size, metadata, tls, auth"
                " FROM messages ORDER BY received_at"
            ):
                yield QueuedMessage(
                    row["id"],
                    row["server_id"],
                    row["received_at"],
                    row["sender"],
                    row["client_ip"],
                    row["size"],
                    json.loads(row["metadata"]),
                    json.loads(row["tls"]) if row["tls"] else None,
                    json.loads(row["auth"]) if row["auth"] else None,
                    tuple(recipients.get(row["id"], ())),
                )
        finally:
            db.close()


def read_message_bytes(spool_dir: Path, message_id: str) -> bytes | None:
    """The stored message exactly as delivery will send it, or None if it is not queued."""
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
        headers, body, body_file = row["headers"], row["body"], row["body_file"]
        if body_file:
            body = Path(body_file).read_bytes()
        return headers + (body if body is not None else b"")
    return None
