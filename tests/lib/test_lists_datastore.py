"""``lists.from_datastore``: a block or allow list whose entries are the keys of a datastore
namespace, read by ``await lst.fresh()`` and again when it is older than its interval."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailwarden.lib import datastore, lists
from mailwarden.lib.datastore import SqliteDatastore
from mailwarden.lib.lists import ListError


@pytest.fixture(autouse=True)
def store(tmp_path: Path) -> Iterator[None]:
    saved = datastore.backend
    datastore.backend = SqliteDatastore(tmp_path / "datastore.db")
    yield
    datastore.backend = saved


async def test_entries_are_the_keys_of_the_namespace() -> None:
    await datastore.set("blocked-senders", "spammer@bulk.example", "complaint #123")
    await datastore.set("blocked-senders", ".spam.example", None)
    await datastore.set("other", "friend@example.org", None)
    blocked = lists.from_datastore("blocked-senders", "address")
    fresh = await blocked.fresh()
    assert fresh is blocked
    assert "SPAMMER@bulk.example" in blocked
    assert "anyone@mx.spam.example" in blocked
    assert "friend@example.org" not in blocked
    assert len(blocked) == 2


async def test_a_lookup_before_the_first_read_raises_rather_than_miss() -> None:
    allowed = lists.from_datastore("allowed-networks", "ip")
    with pytest.raises(RuntimeError, match="not loaded yet"):
        _ = "192.0.2.1" in allowed


async def test_edits_are_seen_once_the_interval_has_passed() -> None:
    networks = lists.from_datastore("denied-networks", "ip", check_interval=0.2)
    assert "192.0.2.7" not in await networks.fresh()
    await datastore.set("denied-networks", "192.0.2.0/24", "abuse")
    assert "192.0.2.7" not in await networks.fresh()  # within the interval: as read
    await asyncio.sleep(0.3)
    assert "192.0.2.7" in await networks.fresh()
    await datastore.delete("denied-networks", "192.0.2.0/24")
    await asyncio.sleep(0.3)
    assert "192.0.2.7" not in await networks.fresh()


async def test_a_bad_key_fails_the_first_read_naming_namespace_and_key() -> None:
    await datastore.set("domains", "not a domain!", None)
    with pytest.raises(ListError, match=r"datastore namespace 'domains' key 'not a domain!'"):
        await lists.from_datastore("domains", "domain").fresh()


async def test_a_bad_key_later_keeps_the_previous_entries(
    caplog: pytest.LogCaptureFixture,
) -> None:
    await datastore.set("domains", "example.org", None)
    domains = lists.from_datastore("domains", "domain", check_interval=0.1)
    assert "example.org" in await domains.fresh()
    await datastore.set("domains", "192.0.2.0/33", None)
    await asyncio.sleep(0.2)
    with caplog.at_level(logging.ERROR, logger="mailwarden.lib"):
        assert "example.org" in await domains.fresh()
    assert "keeping the previous entries" in caplog.text


async def test_concurrent_fresh_calls_share_one_read() -> None:
    await datastore.set("d", "example.org", None)
    domains = lists.from_datastore("d", "domain")
    calls = 0
    keys = datastore.keys

    async def counting_keys(namespace: str) -> list[str]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return await keys(namespace)

    datastore.keys = counting_keys  # type: ignore[method-assign]
    try:
        results = await asyncio.gather(*(domains.fresh() for _ in range(10)))
    finally:
        del datastore.keys
    assert calls == 1
    assert all("example.org" in lst for lst in results)
