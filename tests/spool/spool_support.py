"""Helpers for the spool tests: records as the session builds them, a shard filled through the
store's API, and a version 1 shard written exactly as the first release wrote it."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

from mailwarden.spool.records import SpooledRecipient, SpoolRecord
from mailwarden.spool.schema import SCHEMA_V1
from mailwarden.spool.store import SpoolStore

RECEIVED = 1700000000.0


def record(
    message_id: str,
    *recipients: str,
    received_at: float = RECEIVED,
    metadata: dict[str, Any] | None = None,
) -> SpoolRecord:
    headers = f"Message-ID: <{message_id}@client.test>\r\n\r\n".encode()
    body = b"hello\r\n"
    return SpoolRecord(
        id=message_id,
        server_id="inbound",
        received_at=received_at,
        sender="sender@client.test",
        sender_params={},
        client_ip="127.0.0.1",
        client_port=40000,
        helo="client.test",
        tls=None,
        auth=None,
        metadata={"n": message_id} if metadata is None else metadata,
        headers=headers,
        body=body,
        body_file=None,
        body_fd=None,
        size=len(headers) + len(body),
        # Positional, with the state as a plain value: how smtp/session.py builds them.
        recipients=[SpooledRecipient(r, {}, {}, "active", "") for r in recipients or ["u@x.test"]],
    )


def fill(spool: Path, count: int, *, batch: int = 1000) -> list[str]:
    """``count`` small messages committed through SpoolStore (shard 0); returns their ids."""
    ids = [f"{i:012x}" for i in range(count)]

    async def commit_all() -> None:
        store = SpoolStore(spool, 0, fsync=False, max_batch=batch)
        store.open()
        try:
            for start in range(0, count, batch):
                chunk = ids[start : start + batch]
                await asyncio.gather(*(store.commit(record(i)) for i in chunk))
        finally:
            store.close()

    asyncio.run(commit_all())
    return ids


def write_v1_shard(spool: Path, spilled_body: bytes) -> None:
    """shard-0.db as the first release left it: its SCHEMA, its positional INSERT (16 values
    and a literal 0), ``user_version`` never set; one message in the row, one spilled to
    ``data/`` and named relative to the spool."""
    (spool / "data").mkdir(parents=True)
    spill = spool / "data" / "shard-0-m2"
    spill.write_bytes(spilled_body)
    db = sqlite3.connect(spool / "shard-0.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(SCHEMA_V1)
    for message_id, body, body_file in (
        ("m1", b"small body\r\n", None),
        ("m2", None, "data/shard-0-m2"),
    ):
        headers = f"Subject: {message_id}\r\n\r\n".encode()
        size = len(headers) + len(body or spilled_body)
        db.execute(
            "INSERT INTO messages VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,0,?)",
            (
                message_id,
                "inbound",
                RECEIVED,
                "a@client.test",
                json.dumps({"SIZE": "10"}),
                "192.0.2.1",
                40000,
                "client.test",
                None,
                json.dumps({"username": "a", "mechanism": "PLAIN"}),
                json.dumps({"k": message_id}),
                headers,
                body,
                body_file,
                size,
                RECEIVED,
            ),
        )
        for position, state in enumerate(("active", "held")):
            db.execute(
                "INSERT INTO recipients (message_id, position, address, params, metadata,"
                " state, reason, next_attempt) VALUES (?,?,?,?,?,?,?,?)",
                (
                    message_id,
                    position,
                    f"r{position}@x.test",
                    "{}",
                    "{}",
                    state,
                    "held by policy" if state == "held" else "",
                    RECEIVED,
                ),
            )
    db.close()
    os.sync()
