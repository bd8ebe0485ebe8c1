"""Leases for a delivery in progress: two stores (two processes' worth of connections) on one
shard racing for due messages never lease one twice; expired leases are taken over; only the
holder renews or releases."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.spool.spool_support import RECEIVED, record

from mailwarden.spool import reader
from mailwarden.spool.states import RecipientState
from mailwarden.spool.store import SpoolStore

NOW = RECEIVED + 60


async def committed(spool: Path, count: int) -> SpoolStore:
    store = SpoolStore(spool, 0, fsync=False)
    store.open()
    await asyncio.gather(*(store.commit(record(f"m{i:04d}")) for i in range(count)))
    return store


async def test_two_stores_racing_never_lease_a_message_twice(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    first = await committed(spool, 300)
    second = SpoolStore(spool, 0, fsync=False)
    second.open()
    try:

        async def take_all(store: SpoolStore, owner: str) -> list[str]:
            taken: list[str] = []
            while batch := await store.lease_due(owner, now=NOW, duration=300, limit=7):
                taken += batch
            return taken

        # One batch each first, so both certainly hold some (SQLite's busy handler sleeps, and
        # a store that keeps winning the lock could otherwise take everything), then race.
        a = await first.lease_due("a", now=NOW, duration=300, limit=7)
        b = await second.lease_due("b", now=NOW, duration=300, limit=7)
        rest_a, rest_b = await asyncio.gather(take_all(first, "a"), take_all(second, "b"))
        a, b = a + rest_a, b + rest_b
    finally:
        first.close()
        second.close()
    assert len(a) >= 7 and len(b) >= 7
    assert not set(a) & set(b)
    assert sorted(a + b) == [f"m{i:04d}" for i in range(300)]
    owners = {m.id: m.leased_by for m in reader.iter_messages(spool)}
    assert {owners[i] for i in a} == {"a"} and {owners[i] for i in b} == {"b"}


async def test_only_due_deliverable_unleased_messages_are_leased(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    store = await committed(spool, 4)
    try:
        later = NOW + 3600
        await store.set_recipient_state("m0000", 0, RecipientState.DEFERRED, next_attempt=later)
        await store.set_recipient_state("m0001", 0, RecipientState.HELD, reason="review")
        await store.set_recipient_state("m0002", 0, RecipientState.DEFERRED, next_attempt=NOW)
        assert await store.lease_due("a", now=NOW, duration=60) == ["m0002", "m0003"]
        assert await store.lease_due("b", now=NOW + 30, duration=60) == []  # still held by a
        # The deferred one comes due; a's leases expired (a crashed delivery): b takes over.
        assert await store.lease_due("b", now=later, duration=60) == ["m0000", "m0002", "m0003"]
    finally:
        store.close()


async def test_only_the_holder_renews_or_releases(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    store = await committed(spool, 1)
    try:
        assert await store.lease_due("a", now=NOW, duration=60) == ["m0000"]
        assert not await store.renew_lease("m0000", "b", now=NOW, duration=600)
        assert await store.renew_lease("m0000", "a", now=NOW, duration=600)
        assert await store.lease_due("b", now=NOW + 120, duration=60) == []  # renewed
        assert not await store.release_lease("m0000", "b")
        assert await store.release_lease("m0000", "a")
        assert await store.lease_due("b", now=NOW + 120, duration=60) == ["m0000"]
    finally:
        store.close()
    (message,) = reader.iter_messages(spool)
    assert (message.leased_by, message.lease_until) == ("b", NOW + 180)
