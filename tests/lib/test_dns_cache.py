"""The DNS answer cache (mailwarden.lib.dns_cache) against a real nsd, with the queries that
reach nsd counted by a forwarder in front of it: what is cached sends no query, and what has
expired, failed or was asked with other DNSSEC flags does."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import dns.asyncresolver
import dns.flags
import dns.nameserver
import pytest
from tests.support.dns_counter import QueryCounter, counting_forwarder
from tests.support.dns_server import dns_server

from mailwarden.delivery.mx import resolve_targets
from mailwarden.lib import dns as lib_dns
from mailwarden.lib import dns_cache

# TTLs of 1 s for what the tests watch expire; the zone's negative TTL (SOA MINIMUM) is 1 s.
ZONE = """\
long      300 IN A 192.0.2.1
short       1 IN A 192.0.2.2
other     300 IN A 192.0.2.3
third     300 IN A 192.0.2.4
@         300 IN MX 10 mx.cache.test.
mx        300 IN A 192.0.2.25
"""


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory: Path = tmp_path_factory.mktemp("nsd-cache")
    with dns_server(directory, {"cache.test": ZONE}, ("broken.test",), negative_ttl=1) as nsd:
        yield nsd.address


@pytest.fixture
def counter(upstream: str) -> Iterator[QueryCounter]:
    with counting_forwarder(upstream) as forwarder:
        lib_dns.configure([forwarder.address], timeout=3.0)
        dns_cache.configure(dns_cache.DEFAULT_SIZE)
        dns_cache.clear()
        yield forwarder
    lib_dns.configure()
    dns_cache.configure(dns_cache.DEFAULT_SIZE)


async def test_second_lookup_within_ttl_sends_no_query(counter: QueryCounter) -> None:
    first = await lib_dns.a("long.cache.test")
    second = await lib_dns.a("long.cache.test")
    assert first == second == ["192.0.2.1"]
    assert counter.count("long.cache.test", "A") == 1


async def test_answer_is_asked_again_after_its_ttl(counter: QueryCounter) -> None:
    assert await lib_dns.a("short.cache.test") == ["192.0.2.2"]
    assert await lib_dns.a("short.cache.test") == ["192.0.2.2"]
    assert counter.count("short.cache.test", "A") == 1
    await asyncio.sleep(1.2)
    assert await lib_dns.a("short.cache.test") == ["192.0.2.2"]
    assert counter.count("short.cache.test", "A") == 2


async def test_nxdomain_is_cached_for_the_soa_minimum(counter: QueryCounter) -> None:
    assert await lib_dns.a("missing.cache.test") == []
    assert await lib_dns.a("missing.cache.test") == []
    assert counter.count("missing.cache.test", "A") == 1
    await asyncio.sleep(1.2)
    assert await lib_dns.a("missing.cache.test") == []
    assert counter.count("missing.cache.test", "A") == 2


async def test_nodata_is_cached_too(counter: QueryCounter) -> None:
    assert await lib_dns.aaaa("long.cache.test") == []
    assert await lib_dns.aaaa("long.cache.test") == []
    assert counter.count("long.cache.test", "AAAA") == 1
    # A NODATA for AAAA says nothing about A: that is still asked.
    assert await lib_dns.a("long.cache.test") == ["192.0.2.1"]
    assert counter.count("long.cache.test", "A") == 1


async def test_servfail_is_not_cached(counter: QueryCounter) -> None:
    for _ in range(2):
        with pytest.raises(lib_dns.DnsError):
            await lib_dns.a("www.broken.test")
    assert counter.count("www.broken.test", "A") == 2


async def test_size_zero_turns_the_cache_off(counter: QueryCounter) -> None:
    dns_cache.configure(0)
    await lib_dns.a("long.cache.test")
    await lib_dns.a("long.cache.test")
    assert counter.count("long.cache.test", "A") == 2


async def test_least_recently_used_answer_goes_when_full(counter: QueryCounter) -> None:
    dns_cache.configure(2)
    await lib_dns.a("long.cache.test")
    await lib_dns.a("other.cache.test")
    await lib_dns.a("long.cache.test")  # long is now the most recently used
    await lib_dns.a("third.cache.test")  # evicts other
    await lib_dns.a("long.cache.test")
    await lib_dns.a("other.cache.test")
    assert counter.count("long.cache.test", "A") == 1
    assert counter.count("other.cache.test", "A") == 2


async def test_dnssec_queries_do_not_share_answers(counter: QueryCounter) -> None:
    host, _, port = counter.address.rpartition(":")

    def resolver(flags: int) -> dns.asyncresolver.Resolver:
        made = dns.asyncresolver.Resolver(configure=False)
        made.nameservers = [dns.nameserver.Do53Nameserver(host, int(port))]
        made.flags = flags
        dns_cache.attach(made)
        return made

    plain = resolver(dns.flags.RD)
    validating = resolver(dns.flags.RD | dns.flags.AD)
    assert [r.address for r in await plain.resolve("long.cache.test", "A")] == ["192.0.2.1"]
    answer = await validating.resolve("long.cache.test", "A")
    assert [r.address for r in answer] == ["192.0.2.1"]
    assert counter.count("long.cache.test", "A") == 2  # the plain answer did not serve AD
    await validating.resolve("long.cache.test", "A")
    await plain.resolve("long.cache.test", "A")
    assert counter.count("long.cache.test", "A") == 2  # each kind is cached on its own


async def test_delivery_and_the_library_share_the_cache(counter: QueryCounter) -> None:
    assert [mx.host for mx in await lib_dns.mx("cache.test")] == ["mx.cache.test"]
    assert await lib_dns.a("mx.cache.test") == ["192.0.2.25"]
    targets = await resolve_targets("cache.test", ip_version="ipv4")
    assert [t.address for t in targets] == ["192.0.2.25"]
    assert counter.count("cache.test", "MX") == 1
    assert counter.count("mx.cache.test", "A") == 1


async def test_the_blocking_resolver_shares_the_cache(counter: QueryCounter) -> None:
    await lib_dns.txt("long.cache.test")  # NODATA, cached
    answer = lib_dns.make_sync_resolver().resolve(
        "long.cache.test", "TXT", raise_on_no_answer=False
    )
    assert answer.rrset is None
    assert counter.count("long.cache.test", "TXT") == 1


async def test_other_servers_start_an_empty_cache(counter: QueryCounter, upstream: str) -> None:
    await lib_dns.a("long.cache.test")
    lib_dns.configure([upstream], timeout=3.0)  # straight to nsd
    lib_dns.configure([counter.address], timeout=3.0)
    await lib_dns.a("long.cache.test")
    assert counter.count("long.cache.test", "A") == 2


def test_negative_size_is_refused() -> None:
    with pytest.raises(ValueError, match="0 or more"):
        dns_cache.configure(-1)
