"""Schema versions: a shard of the first release opens under the new code and keeps every
message; opening is idempotent; a shard newer than the code refuses to open; recipients held
before version 4 (quarantine retention) stay held until released."""

from __future__ import annotations

import asyncio
import math
import sqlite3
from pathlib import Path

import pytest
from tests.spool.spool_support import record, write_v1_shard

from mailwarden.spool import reader, schema
from mailwarden.spool.errors import SpoolError
from mailwarden.spool.schema import CURRENT_VERSION
from mailwarden.spool.states import RecipientState
from mailwarden.spool.store import SpoolStore

SPILLED = b"spilled line\r\n" * 5000


def user_version(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute("PRAGMA user_version").fetchone()[0])
    finally:
        db.close()


def open_and_commit(spool: Path, message_id: str) -> None:
    async def run() -> None:
        store = SpoolStore(spool, 0)
        store.open()
        try:
            await store.commit(record(message_id, "new@x.test"))
        finally:
            store.close()

    asyncio.run(run())


def test_a_v1_shard_is_migrated_and_keeps_every_message(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    write_v1_shard(spool, SPILLED)
    assert user_version(spool / "shard-0.db") == 0

    open_and_commit(spool, "m3")  # the new code opens it and writes into it

    assert user_version(spool / "shard-0.db") == CURRENT_VERSION
    messages = {m.id: m for m in reader.iter_messages(spool)}
    assert set(messages) == {"m1", "m2", "m3"}
    old = messages["m2"]
    assert old.sender_params == {"SIZE": "10"}
    assert old.auth == {"username": "a", "mechanism": "PLAIN"}
    assert [(r.address, r.state, r.reason) for r in old.recipients] == [
        ("r0@x.test", RecipientState.ACTIVE, ""),
        ("r1@x.test", RecipientState.HELD, "held by policy"),
    ]
    assert old.leased_by is None and old.lease_until is None
    # The spilled body survived the open (it is no orphan) and reads back byte for byte.
    assert reader.read_message_bytes(spool, "m2") == b"Subject: m2\r\n\r\n" + SPILLED
    assert reader.read_message_bytes(spool, "m1") == b"Subject: m1\r\n\r\nsmall body\r\n"


def test_opening_again_changes_nothing(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    write_v1_shard(spool, SPILLED)
    open_and_commit(spool, "m3")
    before = [(m.id, m.recipients) for m in reader.iter_messages(spool)]
    open_and_commit(spool, "m4")
    after = [(m.id, m.recipients) for m in reader.iter_messages(spool)]
    assert after[:3] == before and [m for m, _ in after] == ["m1", "m2", "m3", "m4"]
    assert user_version(spool / "shard-0.db") == CURRENT_VERSION


def test_the_reader_reads_a_v1_shard_without_migrating_it(tmp_path: Path) -> None:
    # An older node may still be writing it: the reader must not change its columns.
    spool = tmp_path / "spool"
    write_v1_shard(spool, SPILLED)
    assert [m.id for m in reader.iter_messages(spool)] == ["m1", "m2"]
    assert reader.find_message(spool, "m2") is not None
    assert user_version(spool / "shard-0.db") == 0


def test_a_shard_newer_than_the_code_refuses_to_open(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    open_and_commit(spool, "m1")
    shard = spool / "shard-0.db"
    db = sqlite3.connect(shard)
    db.execute(f"PRAGMA user_version = {CURRENT_VERSION + 1}")
    db.close()

    store = SpoolStore(spool, 0)
    with pytest.raises(SpoolError) as caught:
        store.open()
    store.close()
    message = str(caught.value)
    assert str(shard) in message
    assert f"version {CURRENT_VERSION + 1}" in message and f"up to {CURRENT_VERSION}" in message
    with pytest.raises(SpoolError, match="newer than this Mailwarden knows"):
        list(reader.iter_messages(spool))
    assert user_version(shard) == CURRENT_VERSION + 1  # left as it was


def v3_shard(spool: Path) -> Path:
    """A shard as version 3 left it: a v1 shard (message m1 and m2, each with an active and
    a held recipient whose next attempt is its arrival) migrated by the v2 and v3 steps."""
    write_v1_shard(spool, b"spilled\r\n")
    path = spool / "shard-0.db"
    db = sqlite3.connect(path, isolation_level=None)
    try:
        for version, step in schema.MIGRATIONS:
            if 1 < version <= 3:
                step(db)
        db.execute("PRAGMA user_version = 3")
    finally:
        db.close()
    return path


def test_version_4_keeps_what_was_held_before_it_until_released(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    path = v3_shard(spool)
    # Read by a CLI before any node of this version opened it: already "until released".
    before = {m.id: m.recipients[1] for m in reader.iter_messages(spool)}
    assert {m: r.next_attempt for m, r in before.items()} == {"m1": math.inf, "m2": math.inf}
    open_and_commit(spool, "m3")  # this version's node opens (migrates) it
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == schema.CURRENT_VERSION == 4
        rows = db.execute(
            "SELECT message_id, state, next_attempt, on_expiry FROM recipients ORDER BY 1, 2"
        ).fetchall()
    finally:
        db.close()
    assert [(m, s, e) for m, s, _, e in rows if s == "held"] == [
        ("m1", "held", "discard"),
        ("m2", "held", "discard"),
    ]
    assert all(math.isinf(n) for _, s, n, _ in rows if s == "held")
    assert all(not math.isinf(n) for _, s, n, _ in rows if s == "active")
