"""``mailwarden.lib.cache``: per-argument results, LRU, TTL, shared concurrent misses."""

from __future__ import annotations

import asyncio

import pytest

import mailwarden.lib
from mailwarden.lib import cache
from mailwarden.lib.cache import CacheStats


class Lookups:
    """A fake slow service: counts the calls the cache lets through."""

    def __init__(self) -> None:
        self.calls: list[object] = []
        self.release = asyncio.Event()
        self.release.set()

    async def answer(self, *args: object, **kwargs: object) -> str:
        self.calls.append((args, kwargs))
        number = len(self.calls)
        await self.release.wait()
        return f"answer{number}"


async def test_a_second_call_with_the_same_arguments_is_answered_from_memory() -> None:
    service = Lookups()

    @cache(ttl=60, size=10)
    async def lookup(domain: str, kind: str = "mx") -> str:
        return await service.answer(domain, kind)

    assert await lookup("example.org") == "answer1"
    assert await lookup("example.org") == "answer1"
    # The same binding, spelt differently: one entry.
    assert await lookup("example.org", "mx") == "answer1"
    assert await lookup(domain="example.org", kind="mx") == "answer1"
    assert await lookup("example.org", kind="a") == "answer2"
    assert await lookup("example.net") == "answer3"
    assert len(service.calls) == 3
    assert lookup.stats() == CacheStats(hits=3, misses=3, size=3)


async def test_unhashable_argument_is_a_type_error_naming_it_and_nothing_is_called() -> None:
    service = Lookups()

    @cache(ttl=60, size=10)
    async def lookup(domain: str, *, options: object = None) -> str:
        return await service.answer(domain)

    with pytest.raises(TypeError, match=r"argument 'options' is a list"):
        await lookup("example.org", options=["x"])

    @cache(ttl=60, size=10)
    async def many(*names: object, **flags: object) -> str:
        return await service.answer()

    with pytest.raises(TypeError, match=r"argument 'names\[1\]' is a dict"):
        await many("a", {})
    with pytest.raises(TypeError, match=r"argument 'strict' is a set"):
        await many("a", strict={1})
    assert service.calls == []
    assert await many("a", strict=frozenset({1})) == "answer1"


async def test_least_recently_used_result_is_evicted_at_size() -> None:
    service = Lookups()

    @cache(ttl=60, size=2)
    async def lookup(key: str) -> str:
        return await service.answer(key)

    await lookup("a")
    await lookup("b")
    await lookup("a")  # a is now the most recently used
    await lookup("c")  # evicts b
    assert lookup.stats().size == 2
    calls = len(service.calls)
    await lookup("a")
    await lookup("c")
    assert len(service.calls) == calls  # both still held
    await lookup("b")
    assert len(service.calls) == calls + 1  # b was the one evicted


async def test_result_expires_after_ttl() -> None:
    service = Lookups()

    @cache(ttl=0.2, size=10)
    async def lookup(key: str) -> str:
        return await service.answer(key)

    assert await lookup("a") == "answer1"
    assert await lookup("a") == "answer1"
    await asyncio.sleep(0.3)
    assert lookup.stats().size == 0  # expired results are not counted
    assert await lookup("a") == "answer2"
    assert lookup.stats() == CacheStats(hits=1, misses=2, size=1)


async def test_concurrent_misses_for_one_key_share_one_call() -> None:
    service = Lookups()
    service.release.clear()

    @cache(ttl=60, size=10)
    async def lookup(key: str) -> str:
        return await service.answer(key)

    waiters = [asyncio.create_task(lookup("a")) for _ in range(5)]
    other = asyncio.create_task(lookup("b"))
    await asyncio.sleep(0.05)
    assert len(service.calls) == 2  # one for a, one for b
    service.release.set()
    assert set(await asyncio.gather(*waiters)) == {"answer1"}
    assert await other == "answer2"
    assert len(service.calls) == 2
    assert await lookup("a") == "answer1"


async def test_a_failing_call_fails_every_waiter_and_is_not_cached() -> None:
    attempts = 0
    release = asyncio.Event()

    @cache(ttl=60, size=10)
    async def lookup(key: str) -> str:
        nonlocal attempts
        attempts += 1
        await release.wait()
        if attempts == 1:
            raise ConnectionError("service down")
        return "up"

    waiters = [asyncio.create_task(lookup("a")) for _ in range(3)]
    await asyncio.sleep(0.05)
    release.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert [type(result) for result in results] == [ConnectionError] * 3
    assert attempts == 1
    assert lookup.stats().size == 0
    assert await lookup("a") == "up"  # tried again
    assert attempts == 2


async def test_a_cancelled_waiter_does_not_cancel_the_shared_call() -> None:
    service = Lookups()
    service.release.clear()

    @cache(ttl=60, size=10)
    async def lookup(key: str) -> str:
        return await service.answer(key)

    first = asyncio.create_task(lookup("a"))
    second = asyncio.create_task(lookup("a"))
    await asyncio.sleep(0.05)
    first.cancel()  # e.g. its hook timed out
    await asyncio.sleep(0.01)
    service.release.set()
    assert await second == "answer1"
    assert first.cancelled()
    assert await lookup("a") == "answer1"


async def test_clear_forgets_results_and_namespace_clear_only_its_own() -> None:
    service = Lookups()

    @cache(ttl=60, size=10, namespace="dns-test")
    async def dns(key: str) -> str:
        return await service.answer("dns", key)

    @cache(ttl=60, size=10, namespace="http-test")
    async def http(key: str) -> str:
        return await service.answer("http", key)

    await dns("a")
    await http("a")
    cache.clear("dns-test")  # also reachable as mailwarden.lib.cache.clear
    assert (dns.stats().size, http.stats().size) == (0, 1)
    await dns("a")
    await http("a")
    assert len(service.calls) == 3
    http.clear()
    assert http.stats().size == 0
    mailwarden.lib.cache.clear()  # every namespace
    assert dns.stats().size == 0


async def test_a_call_running_during_clear_is_not_stored() -> None:
    service = Lookups()
    service.release.clear()

    @cache(ttl=60, size=10)
    async def lookup(key: str) -> str:
        return await service.answer(key)

    running = asyncio.create_task(lookup("a"))
    await asyncio.sleep(0.05)
    lookup.clear()
    service.release.set()
    assert await running == "answer1"  # its waiter still gets the answer
    assert lookup.stats().size == 0
    assert await lookup("a") == "answer2"


def test_decorating_something_that_is_not_async_or_bad_bounds_is_refused() -> None:
    with pytest.raises(TypeError, match="not an async def"):
        cache(ttl=1, size=1)(lambda: None)
    with pytest.raises(ValueError, match="ttl must be > 0"):
        cache(ttl=0, size=1)
    with pytest.raises(ValueError, match="size must be an integer >= 1"):
        cache(ttl=1, size=0)


async def test_a_decorated_method_caches_per_instance() -> None:
    service = Lookups()

    class Resolver:
        def __init__(self, zone: str) -> None:
            self.zone = zone

        @cache(ttl=60, size=10)
        async def lookup(self, name: str) -> str:
            return await service.answer(self.zone, name)

    first, second = Resolver("a.example"), Resolver("b.example")
    assert await first.lookup("x") == "answer1"
    assert await first.lookup("x") == "answer1"
    assert await second.lookup("x") == "answer2"
    assert Resolver.lookup.stats() == CacheStats(hits=1, misses=2, size=2)
