"""The event sink history will subscribe to: typed events after the commit (the row is on disk
when the subscriber hears of it), subscriber errors logged and never failing the commit."""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import replace
from pathlib import Path

import pytest
from tests.spool.spool_support import RECEIVED, record

from mailwarden.logs import CONNECTION, TRANSACTION
from mailwarden.spool import reader
from mailwarden.spool.events import (
    MessageQueued,
    MessageRemoved,
    RecipientStateChanged,
    SpoolEvent,
)
from mailwarden.spool.states import RecipientState
from mailwarden.spool.store import SpoolStore


async def test_events_come_after_the_commit_and_a_failing_subscriber_fails_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = tmp_path / "spool"
    store = SpoolStore(spool, 0)
    store.open()
    seen: list[SpoolEvent] = []
    visible: list[bool] = []

    def broken(event: SpoolEvent) -> None:
        raise RuntimeError("history is down")

    def history(event: SpoolEvent) -> None:
        seen.append(event)
        if isinstance(event, MessageQueued):  # another connection already sees the row
            visible.append(reader.find_message(spool, event.record.id) is not None)

    store.events.subscribe(broken)
    unsubscribe = store.events.subscribe(history)
    try:
        with caplog.at_level(logging.ERROR, logger="mailwarden.spool"):
            await store.commit(record("m1", "a@x.test", "b@x.test"))
        assert "history is down" in caplog.text
        assert visible == [True]
        (queued,) = seen
        assert isinstance(queued, MessageQueued)
        assert [r.address for r in queued.record.recipients] == ["a@x.test", "b@x.test"]

        later = RECEIVED + 900
        assert await store.set_recipient_state(
            "m1",
            1,
            RecipientState.DEFERRED,
            reason="4.4.1",
            next_attempt=later,
            last_reply="451 4.4.1 try later",
            count_attempt=True,
        )
        assert seen[-1] == RecipientStateChanged(
            "m1",
            1,
            "b@x.test",
            RecipientState.DEFERRED,
            "4.4.1",
            1,
            later,
            "451 4.4.1 try later",
        )
        assert not await store.set_recipient_state("m1", 7, RecipientState.DELIVERED)

        assert await store.remove("m1", "delivered")
        assert seen[-1] == MessageRemoved("m1", "delivered")
        assert len(seen) == 3
        unsubscribe()
        await store.commit(record("m2"))
        assert len(seen) == 3
    finally:
        store.close()
    assert [m.id for m in reader.iter_messages(spool)] == ["m2"]


async def test_removing_a_spilled_message_removes_its_file(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    store = SpoolStore(spool, 0)
    store.open()
    try:
        path = store.spill_path("big")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, b"a body too large for memory\r\n")
        await store.commit(replace(record("big"), body=None, body_file=path, body_fd=fd))
        os.close(fd)
        assert path.exists()
        assert await store.remove("big", "operator")
        assert not path.exists()
        assert not await store.remove("big", "operator")
    finally:
        store.close()


async def test_the_commit_batch_carries_no_sessions_log_ids(tmp_path: Path) -> None:
    """Two sessions commit in one batch: what the batch logs (and its subscribers see) is no
    one session's, so it has neither session's connection or transaction id."""
    store = SpoolStore(tmp_path / "spool", 0)
    store.open()
    seen: list[tuple[str | None, str | None]] = []
    store.events.subscribe(lambda event: seen.append((CONNECTION.get(), TRANSACTION.get())))

    async def session(conn: str, message_id: str) -> None:
        CONNECTION.set(conn)
        TRANSACTION.set(message_id)
        await store.commit(record(message_id))
        assert (CONNECTION.get(), TRANSACTION.get()) == (conn, message_id)

    try:
        await asyncio.gather(session("c1", "m1"), session("c2", "m2"))
    finally:
        store.close()
    assert seen and set(seen) == {(None, None)}
