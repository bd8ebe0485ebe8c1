"""Quarantine retention on a real shard: a worker's sweep (with an injected clock) discards or
bounces the held recipients whose retention ended, in one transaction with the DSN and the
removal, tells the store's subscribers, leaves a message being delivered for the next sweep,
and works through a backlog in small batches."""

from __future__ import annotations

import asyncio
import email
import email.policy
import math
import time
from pathlib import Path

from tests.support.queue_spool import Rcpt, commit, lease, message

from mailwarden.queue.manager import ManagerSettings
from mailwarden.queue.sweeper import RetentionSweeper
from mailwarden.spool.events import MessageQueued, MessageRemoved, RecipientStateChanged
from mailwarden.spool.reader import find_message, iter_messages, read_message_bytes
from mailwarden.spool.states import RecipientState
from mailwarden.spool.store import SpoolStore

NOW = time.time()
ENDED = NOW - 1.0
SETTINGS = ManagerSettings(hold_sweep_interval=60.0, reporting_mta="mx.test.example")


def sweep(spool: Path, now: float, *, batch: int = 100) -> tuple[float, list[object]]:
    """One sweep of shard 0 at ``now``: when the next is due, and the events it emitted."""
    events: list[object] = []

    async def run() -> float:
        store = SpoolStore(spool, 0, fsync=False)
        store.open()
        store.events.subscribe(events.append)
        try:
            ids = iter(range(1, 1000))
            sweeper = RetentionSweeper(
                store, lambda: SETTINGS, new_id=lambda: f"dsn{next(ids)}", batch=batch
            )
            return await sweeper.sweep(now, SETTINGS)
        finally:
            store.close()

    return asyncio.run(run()), events


def test_an_ended_retention_discards_and_the_message_leaves_with_its_spill_file(
    tmp_path: Path,
) -> None:
    spool = tmp_path / "spool"
    commit(
        spool,
        [
            message("spam", Rcpt("a@x.test", state="held", next_attempt=ENDED)),
            message("later", Rcpt("b@x.test", state="held", next_attempt=NOW + 30)),
        ],
        spilled={"spam": b"big body\r\n" * 1000},
    )
    spill = spool / "data" / "shard-0-spam"
    assert spill.exists()
    wake, events = sweep(spool, NOW)
    assert [m.id for m in iter_messages(spool)] == ["later"]
    assert not spill.exists()
    assert wake == NOW + 30  # the earliest end left, sooner than the interval
    assert [type(e) for e in events] == [RecipientStateChanged, MessageRemoved]
    changed = events[0]
    assert isinstance(changed, RecipientStateChanged)
    assert (changed.message_id, changed.address, changed.state) == (
        "spam",
        "a@x.test",
        RecipientState.DISCARDED,
    )


def test_bounce_on_expiry_queues_one_dsn_in_the_same_shard(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    commit(
        spool,
        [
            message(
                "review",
                Rcpt("a@x.test", state="held", next_attempt=ENDED, on_expiry="bounce"),
                Rcpt("b@x.test", state="held", next_attempt=ENDED, on_expiry="bounce"),
                Rcpt("c@x.test", state="deferred", next_attempt=NOW + 600),
                sender="alice@client.test",
            )
        ],
    )
    _, events = sweep(spool, NOW)
    kept = find_message(spool, "review")
    assert kept is not None  # c@ still waits for its retry
    assert [r.state for r in kept.recipients] == [
        RecipientState.BOUNCED,
        RecipientState.BOUNCED,
        RecipientState.DEFERRED,
    ]
    assert kept.recipients[0].last_reply.startswith("550 5.7.1")
    dsn = find_message(spool, "dsn1")
    assert (
        dsn is not None and dsn.sender == "" and dsn.recipients[0].address == ("alice@client.test")
    )
    data = read_message_bytes(spool, "dsn1")
    assert data is not None
    report = email.message_from_bytes(data, policy=email.policy.default)
    text = " ".join(report.as_string().split())
    assert "Final-Recipient: rfc822; a@x.test" in text
    assert "Final-Recipient: rfc822; b@x.test" in text
    assert "Status: 5.7.1" in text and "c@x.test" not in text
    assert any(isinstance(e, MessageQueued) and e.record.id == "dsn1" for e in events)
    assert not any(isinstance(e, MessageRemoved) for e in events)


def test_a_message_being_delivered_is_left_for_the_next_sweep(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    commit(
        spool,
        [
            message(
                "busy",
                Rcpt("a@x.test", state="held", next_attempt=ENDED),
                Rcpt("b@x.test", state="active"),
            )
        ],
    )
    lease(spool, "busy", seconds=300)
    wake, _ = sweep(spool, NOW)
    assert wake == NOW + SETTINGS.hold_sweep_interval  # its past end is not waited for
    busy = find_message(spool, "busy")
    assert busy is not None and busy.recipients[0].state is RecipientState.HELD
    lease(spool, "busy", seconds=-1)  # the delivery is over (its lease ended)
    sweep(spool, time.time())
    busy = find_message(spool, "busy")
    assert busy is not None
    assert [r.state for r in busy.recipients] == [RecipientState.DISCARDED, RecipientState.ACTIVE]


def test_a_backlog_goes_in_small_batches_one_after_the_other(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    commit(
        spool,
        [message(f"m{i}", Rcpt("a@x.test", state="held", next_attempt=ENDED)) for i in range(5)],
    )
    wake, _ = sweep(spool, NOW, batch=2)
    assert wake == NOW and len(list(iter_messages(spool))) == 3  # more to do: at once
    sweep(spool, NOW, batch=2)
    wake, _ = sweep(spool, NOW, batch=2)
    assert list(iter_messages(spool)) == []
    assert wake == NOW + SETTINGS.hold_sweep_interval  # nothing held left: the interval


def test_a_hold_for_ever_is_never_swept(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    commit(spool, [message("legal", Rcpt("a@x.test", state="held", next_attempt=math.inf))])
    wake, events = sweep(spool, NOW + 100 * 365 * 86400)
    (legal,) = iter_messages(spool)
    assert legal.recipients[0].next_attempt == math.inf and events == []
    assert wake == NOW + 100 * 365 * 86400 + SETTINGS.hold_sweep_interval
