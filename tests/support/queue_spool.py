"""A spool with the queue states an operator meets (deferred with replies, held, leased for a
delivery in progress, several shards), committed through SpoolStore as the node commits, and a
configuration file pointing ``mailwarden queue`` at it."""

from __future__ import annotations

import asyncio
import sqlite3
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mailwarden.spool.records import SpooledRecipient, SpoolRecord
from mailwarden.spool.store import SpoolStore


@dataclass(frozen=True)
class Rcpt:
    address: str
    state: str = "active"
    retries: int = 0
    last_reply: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    params: dict[str, str | None] = field(default_factory=dict)
    reason: str = ""
    next_attempt: float | None = None  # held: the retention end
    on_expiry: str = "discard"


def message(
    message_id: str,
    *recipients: Rcpt | str,
    sender: str = "alice@client.test",
    age: float = 60.0,
    metadata: dict[str, Any] | None = None,
    body: bytes = b"Hello.\r\n",
    sender_params: dict[str, str | None] | None = None,
) -> SpoolRecord:
    """A queued message received ``age`` seconds ago."""
    headers = (
        f"From: <{sender}>\r\nSubject: test {message_id}\r\n"
        f"Message-ID: <{message_id}@client.test>\r\n\r\n"
    ).encode()
    received = time.time() - age
    rcpts = [Rcpt(r) if isinstance(r, str) else r for r in recipients]
    return SpoolRecord(
        id=message_id,
        server_id="inbound",
        received_at=received,
        sender=sender,
        sender_params=sender_params or {},
        client_ip="127.0.0.1",
        client_port=40000,
        helo="client.test",
        tls=None,
        auth=None,
        metadata=metadata or {},
        headers=headers,
        body=body,
        size=len(headers) + len(body),
        recipients=[
            SpooledRecipient(
                r.address,
                r.params,
                r.metadata,
                r.state,
                r.reason,
                retry_count=r.retries,
                next_attempt=r.next_attempt,
                last_reply=r.last_reply,
                on_expiry=r.on_expiry,
            )
            for r in rcpts
        ],
    )


def commit(
    spool: Path,
    records: Sequence[SpoolRecord],
    shard: int = 0,
    spilled: dict[str, bytes] | None = None,
) -> None:
    """Commit ``records`` to shard ``shard`` of ``spool`` through SpoolStore; the bodies in
    ``spilled`` (by message id) go to spill files, as a large body does."""

    async def run() -> None:
        store = SpoolStore(spool, shard, fsync=False)
        store.open()  # first: opening removes spill files that no row names yet
        try:
            ready = []
            for record in records:
                if spilled and record.id in spilled:
                    path = store.spill_path(record.id)
                    path.write_bytes(spilled[record.id])
                    record = replace(record, body=None, body_file=path)
                ready.append(record)
            await asyncio.gather(*(store.commit(r) for r in ready))
        finally:
            store.close()

    asyncio.run(run())


def lease(spool: Path, message_id: str, *, owner: str = "worker-0", seconds: float = 300.0) -> None:
    """Give a message a lease, as a worker delivering it holds (``seconds`` < 0: expired)."""
    for path in sorted(spool.glob("shard-*.db")):
        db = sqlite3.connect(path, isolation_level=None)
        try:
            db.execute(
                "UPDATE messages SET leased_by = ?, lease_until = ? WHERE id = ?",
                (owner, time.time() + seconds, message_id),
            )
        finally:
            db.close()


def write_config(directory: Path, spool: Path, extra: str = "") -> Path:
    """A configuration whose data directory is ``directory/data`` and spool ``spool``."""
    path = directory / "mailwarden.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            [node]
            data_dir = "{directory / "data"}"
            hostname = "mx.test.example"

            [spool]
            path = "{spool}"
            """
        )
        + textwrap.dedent(extra)
    )
    return path
