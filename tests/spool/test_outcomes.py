"""The delivery side of the store: leasing with the bytes, batched outcomes, removal."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from pathlib import Path

from tests.spool.spool_support import RECEIVED, fill, record

from mailwarden.spool.events import MessageQueued, MessageRemoved
from mailwarden.spool.outcomes import (
    AttemptOutcome,
    RecipientOutcome,
    apply_outcomes,
    lease_and_load,
)
from mailwarden.spool.reader import find_message, iter_messages
from mailwarden.spool.states import RecipientState
from mailwarden.spool.store import SpoolStore

NOW = RECEIVED + 10
DELIVERED = RecipientState.DELIVERED
DEFERRED = RecipientState.DEFERRED


def _run(spool: Path, scenario) -> object:
    async def main() -> object:
        store = SpoolStore(spool, 0, fsync=True)
        store.open()
        try:
            return await scenario(store)
        finally:
            store.close()

    return asyncio.run(main())


def test_a_leased_message_comes_with_its_envelope_and_exact_bytes(tmp_path: Path) -> None:
    async def scenario(store: SpoolStore):
        await store.commit(record("m1", "a@x.test", "b@y.test"))
        leased = await store.lease_messages("w", now=NOW, duration=60, limit=10)
        again = await store.lease_messages("other", now=NOW, duration=60, limit=10)
        return leased, again

    leased, again = _run(tmp_path, scenario)
    assert [m.record.id for m in leased] == ["m1"]
    assert [r.address for r in leased[0].record.recipients] == ["a@x.test", "b@y.test"]
    assert leased[0].message_bytes() == b"Message-ID: <m1@client.test>\r\n\r\nhello\r\n"
    assert again == []  # a live lease is never given twice


def test_a_spilled_body_is_read_from_its_file(tmp_path: Path) -> None:
    spill = tmp_path / "data" / "shard-0-m1"

    async def scenario(store: SpoolStore):
        spill.write_bytes(b"big body\r\n")
        with spill.open("rb") as file:
            spilled = dataclasses.replace(
                record("m1"), body=None, body_file=spill, body_fd=file.fileno()
            )
            await store.commit(spilled)
        return await store.lease_messages("w", now=NOW, duration=60, limit=10)

    tmp_path.joinpath("data").mkdir()
    (leased,) = _run(tmp_path, scenario)
    assert leased.message_bytes().endswith(b"\r\n\r\nbig body\r\n")


def test_a_message_leaves_only_when_every_recipient_is_final(tmp_path: Path) -> None:
    async def scenario(store: SpoolStore):
        events = []
        store.events.subscribe(events.append)
        await store.commit(record("m1", "a@x.test", "b@y.test"))
        await store.lease_messages("w", now=NOW, duration=60, limit=10)
        partial = AttemptOutcome(
            "m1",
            (
                RecipientOutcome(0, DELIVERED, last_reply="250 2.0.0 ok"),
                RecipientOutcome(
                    1, DEFERRED, "busy", "451 4.3.0 busy", next_attempt=NOW + 60, count_attempt=True
                ),
            ),
        )
        await store.record_outcomes("w", [partial])
        after_first = find_message(tmp_path, "m1")
        # The lease ended with the outcome: the deferred recipient is due again at its time.
        not_yet = await store.lease_messages("w", now=NOW + 1, duration=60, limit=10)
        due = await store.lease_messages("w", now=NOW + 60, duration=60, limit=10)
        done = AttemptOutcome("m1", (RecipientOutcome(1, DELIVERED, last_reply="250 ok"),))
        await store.record_outcomes("w", [done])
        return after_first, not_yet, due, events

    after_first, not_yet, due, events = _run(tmp_path, scenario)
    assert after_first is not None and after_first.leased_by is None
    assert [r.state for r in after_first.recipients] == [DELIVERED, DEFERRED]
    assert after_first.recipients[1].retry_count == 1
    assert after_first.recipients[1].last_reply == "451 4.3.0 busy"
    assert not_yet == [] and [m.record.id for m in due] == ["m1"]
    assert find_message(tmp_path, "m1") is None
    assert [e for e in events if isinstance(e, MessageRemoved)] == [
        MessageRemoved("m1", "delivered")
    ]


def test_a_bounce_is_queued_in_the_same_transaction_as_the_failure(tmp_path: Path) -> None:
    bounce = dataclasses.replace(record("dsn1", "sender@client.test"), sender="")

    async def scenario(store: SpoolStore):
        events = []
        store.events.subscribe(events.append)
        await store.commit(record("m1", "a@x.test"))
        await store.lease_messages("w", now=NOW, duration=60, limit=10)
        failed = AttemptOutcome(
            "m1",
            (RecipientOutcome(0, RecipientState.BOUNCED, "no such user", "550 5.1.1 no"),),
            new_records=(bounce,),
            removal_reason="bounced",
        )
        await store.record_outcomes("w", [failed])
        return events

    events = _run(tmp_path, scenario)
    assert [m.id for m in iter_messages(tmp_path)] == ["dsn1"]
    assert any(isinstance(e, MessageQueued) and e.record.id == "dsn1" for e in events)


def test_many_outcomes_share_one_transaction(tmp_path: Path) -> None:
    async def scenario(store: SpoolStore):
        await asyncio.gather(*(store.commit(record(f"m{i}")) for i in range(50)))
        leased = await store.lease_messages("w", now=NOW, duration=60, limit=100)
        outcomes = [AttemptOutcome(m.record.id, (RecipientOutcome(0, DELIVERED),)) for m in leased]
        await asyncio.gather(*(store.record_outcomes("w", [o]) for o in outcomes))
        return len(leased)

    assert _run(tmp_path, scenario) == 50
    assert list(iter_messages(tmp_path)) == []


def test_clear_leases_frees_a_crashed_predecessors_messages_at_once(tmp_path: Path) -> None:
    async def scenario(store: SpoolStore):
        await store.commit(record("m1"))
        await store.lease_messages("crashed", now=NOW, duration=3600, limit=10)
        before = await store.lease_messages("new", now=NOW + 1, duration=60, limit=10)
        cleared = await store.clear_leases()
        after = await store.lease_messages("new", now=NOW + 1, duration=60, limit=10)
        return before, cleared, after

    before, cleared, after = _run(tmp_path, scenario)
    assert before == [] and cleared == 1 and [m.record.id for m in after] == ["m1"]


def test_next_due_is_the_earliest_waiting_attempt(tmp_path: Path) -> None:
    async def scenario(store: SpoolStore):
        empty = await store.next_due(NOW)
        await store.commit(dataclasses.replace(record("m1"), next_attempt=None))
        await store.lease_messages("w", now=NOW, duration=60, limit=10)
        leased = await store.next_due(NOW)
        outcome = AttemptOutcome("m1", (RecipientOutcome(0, DEFERRED, next_attempt=NOW + 300),))
        await store.record_outcomes("w", [outcome])
        return empty, leased, await store.next_due(NOW)

    empty, leased, deferred = _run(tmp_path, scenario)
    # Leased, the message is next due when its lease ends (if its delivery never records).
    assert empty is None and leased == NOW + 60 and deferred == NOW + 300


def test_a_leased_message_waits_for_its_lease_and_a_given_back_one_is_due_at_once(
    tmp_path: Path,
) -> None:
    """Leased, a message's due recipients show their next attempt as the lease's end (when
    another delivery could take it over), the renewal moves it on; an outcome that leaves a
    recipient alone (an attempt given back at shutdown) makes it due at once, not when the
    lease would have ended; a deferred one keeps the time the outcome gave it."""

    async def scenario(store: SpoolStore):
        await store.commit(record("m1", "a@x.test", "b@y.test"))
        await store.lease_messages("w", now=NOW, duration=600, limit=10)
        leased = find_message(tmp_path, "m1")
        await store.renew_leases("w", now=NOW + 100, duration=600)
        renewed = find_message(tmp_path, "m1")
        given_back = AttemptOutcome(
            "m1", (RecipientOutcome(1, DEFERRED, "busy", next_attempt=NOW + 300),)
        )
        await store.record_outcomes("w", [given_back])
        due = await store.lease_messages("w", now=NOW + 1, duration=60, limit=10)
        return leased, renewed, due

    leased, renewed, due = _run(tmp_path, scenario)
    assert [r.next_attempt for r in leased.recipients] == [NOW + 600, NOW + 600]
    assert [r.next_attempt for r in renewed.recipients] == [NOW + 700, NOW + 700]
    (message,) = due
    assert [(r.state, r.next_attempt) for r in message.record.recipients] == [
        (RecipientState.ACTIVE, RECEIVED),
        (DEFERRED, NOW + 300),
    ]


def _steps_to_lease_and_record(spool: Path, deferred: int) -> int:
    """SQLite VM steps to lease ten due messages and record their outcomes, in a shard that
    also holds ``deferred`` messages waiting for a retry and ``deferred`` due ones."""
    fill(spool, 2 * deferred + 10)
    db = sqlite3.connect(spool / "shard-0.db", isolation_level=None)
    later = NOW + 3600
    db.execute(
        "UPDATE recipients SET state = ?, next_attempt = ? WHERE rowid IN"
        " (SELECT rowid FROM recipients ORDER BY message_id DESC LIMIT ?)",
        (DEFERRED.value, later, deferred),
    )
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    db.set_progress_handler(count, 100)
    db.execute("BEGIN IMMEDIATE")
    leased = lease_and_load(db, spool, "w", now=NOW, until=NOW + 60, limit=10)
    outcomes = [AttemptOutcome(m.record.id, (RecipientOutcome(0, DELIVERED),)) for m in leased]
    apply_outcomes(db, spool, "w", outcomes)
    db.execute("COMMIT")
    db.close()
    assert len(leased) == 10
    return steps


def test_a_large_queue_does_not_slow_leasing_or_recording(tmp_path: Path) -> None:
    # A shard with thousands of deferred (and due) messages: leasing ten and recording their
    # outcomes reads those ten, not every deliverable recipient of the shard (as a plan
    # through recipients_due's state range did, once per batch).
    small = _steps_to_lease_and_record(tmp_path / "small", 10)
    large = _steps_to_lease_and_record(tmp_path / "large", 4000)
    assert large < 2 * small, (small, large)
