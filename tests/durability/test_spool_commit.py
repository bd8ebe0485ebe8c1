"""Group commit on a real SQLite shard: an unexpected failure inside a batch's write answers
that batch's sessions (451, never a hang) and the commits after it still reach the disk."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from tests.spool.spool_support import record as spool_record

from mailwarden.smtp import replies
from mailwarden.spool import reader
from mailwarden.spool.errors import SpoolError
from mailwarden.spool.store import SpoolRecord, SpoolStore

# Only stops a hanging commit from hanging the suite; a working store answers in milliseconds.
HANG_GUARD = 30.0


def record(message_id: str, metadata: dict[str, Any]) -> SpoolRecord:
    return spool_record(message_id, "user@example.org", metadata=metadata)


def unencodable_metadata() -> dict[str, Any]:
    """Metadata that json.dumps refuses with ValueError (a circular reference): an error of
    the write that is not a SpoolError, as any bug or unforeseen value could raise."""
    metadata: dict[str, Any] = {}
    metadata["self"] = metadata
    return metadata


async def test_a_failure_that_is_not_a_spool_error_answers_451_and_the_drain_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = SpoolStore(tmp_path / "spool", 0)
    store.open()
    try:
        with (
            caplog.at_level(logging.ERROR, logger="mailwarden.spool"),
            pytest.raises(SpoolError) as caught,
        ):
            await asyncio.wait_for(
                store.commit(record("broken", unencodable_metadata())), HANG_GUARD
            )
        assert caught.value.reply is replies.SPOOL_WRITE_FAILED
        assert caught.value.reply.code == 451
        assert "Circular reference" in caplog.text  # the cause is in the node log

        await asyncio.wait_for(store.commit(record("good", {"k": "v"})), HANG_GUARD)
    finally:
        store.close()

    queued = {message.id: message for message in reader.iter_messages(tmp_path / "spool")}
    assert set(queued) == {"good"}, "the failed record must not be queued, the next one must"
    assert queued["good"].metadata == {"k": "v"}


async def test_commits_waiting_behind_a_failed_batch_are_written(tmp_path: Path) -> None:
    """Sessions that queued up while the failing batch was being written form the next batch;
    they must be committed, not left waiting."""
    store = SpoolStore(tmp_path / "spool", 0, max_batch=1)
    store.open()
    try:
        results = await asyncio.wait_for(
            asyncio.gather(
                store.commit(record("broken", unencodable_metadata())),
                store.commit(record("second", {})),
                store.commit(record("third", {})),
                return_exceptions=True,
            ),
            HANG_GUARD,
        )
    finally:
        store.close()
    assert isinstance(results[0], SpoolError), results
    assert results[1:] == [None, None], results
    assert {m.id for m in reader.iter_messages(tmp_path / "spool")} == {"second", "third"}
