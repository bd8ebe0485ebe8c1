"""mailwarden.lib.dns against a real authoritative server (nsd) on loopback."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from tests.lib.conftest import LONG_TXT
from tests.support.dns_server import DnsServer, dns_server, silent_server

from mailwarden.lib import dns
from mailwarden.lib.dns import DnsblResult, DnsError, MxRecord, TlsaRecord

pytestmark = pytest.mark.usefixtures("resolver")


async def test_a_and_aaaa_records() -> None:
    assert sorted(await dns.a("www.example.test")) == ["192.0.2.11", "192.0.2.12"]
    assert await dns.aaaa("www.example.test") == ["2001:db8::11"]
    assert sorted(await dns.a("alias.example.test")) == ["192.0.2.11", "192.0.2.12"]


async def test_mx_records_are_sorted_by_preference() -> None:
    assert await dns.mx("example.test") == [
        MxRecord(10, "mx1.example.test"),
        MxRecord(20, "mx2.example.test"),
    ]
    assert await dns.mx("nullmx.example.test") == [MxRecord(0, "")]


async def test_txt_strings_are_joined_per_record() -> None:
    assert sorted(await dns.txt("example.test")) == sorted(["hello world", LONG_TXT])


async def test_ptr_of_ipv4_and_ipv6() -> None:
    assert sorted(await dns.ptr("127.0.0.10")) == [
        "confirmed.example.test",
        "liar.example.test",
        "missing.example.test",
    ]
    assert await dns.ptr("2001:db8::10") == ["v6host.example.test"]
    with pytest.raises(ValueError):
        await dns.ptr("not-an-ip")


async def test_tlsa_records() -> None:
    records = sorted(await dns.tlsa("_25._tcp.mx1.example.test"), key=lambda r: r.usage)
    assert records == [
        TlsaRecord(2, 0, 0, bytes.fromhex("3082cafe")),
        TlsaRecord(3, 1, 1, bytes.fromhex("0123456789abcdef" * 4)),
    ]
    assert records[1].hex == "0123456789abcdef" * 4


async def test_nxdomain_and_nodata_are_empty() -> None:
    assert await dns.a("nowhere.example.test") == []  # NXDOMAIN
    assert await dns.aaaa("nodata.example.test") == []  # the name exists, no AAAA
    assert await dns.mx("www.example.test") == []
    assert await dns.txt("nowhere.example.test") == []
    assert await dns.tlsa("_25._tcp.mx2.example.test") == []
    assert await dns.ptr("127.0.0.99") == []


async def test_servfail_raises_dns_error() -> None:
    with pytest.raises(DnsError) as caught:
        await dns.a("www.broken.test")
    assert caught.value.name == "www.broken.test"
    assert caught.value.rdtype == "A"
    assert "www.broken.test" in str(caught.value)


async def test_a_silent_server_times_out_within_the_callers_timeout(nsd: DnsServer) -> None:
    with silent_server() as address:
        dns.configure([address], timeout=30.0)
        started = time.monotonic()
        with pytest.raises(DnsError, match=r"no answer within 0\.5s"):
            await dns.a("www.example.test", timeout=0.5)
        assert time.monotonic() - started < 5  # the 0.5 s, not the configured 30 s
        dns.configure([address], timeout=0.5)
        with pytest.raises(DnsError):
            await dns.dnsbl("127.0.0.2", "bl.test")


async def test_a_silent_first_server_leaves_time_for_the_next(nsd: DnsServer) -> None:
    with silent_server() as address:
        dns.configure([address, nsd.address], timeout=4.0)
        assert sorted(await dns.a("www.example.test")) == ["192.0.2.11", "192.0.2.12"]


async def test_dnsbl_ipv4_codes_and_reason() -> None:
    listed = await dns.dnsbl("127.0.0.2", "bl.test")
    assert listed == DnsblResult(
        ("127.0.0.2",), "listed: test entry, see https://bl.example.test/127.0.0.2"
    )
    assert listed
    several = await dns.dnsbl("127.0.0.4", "bl.test")
    assert several.codes == ("127.0.0.2", "127.0.0.4")
    assert several.reason is not None
    assert sorted(several.reason.split(" and ")) == ["as a dynamic address", "listed for spam"]
    no_reason = await dns.dnsbl("127.0.0.5", "bl.test.")
    assert no_reason == DnsblResult(("127.0.0.4",), None)


async def test_dnsbl_not_listed_and_non_loopback_answers() -> None:
    clean = await dns.dnsbl("127.0.0.1", "bl.test")
    assert clean == DnsblResult()
    assert not clean
    # An answer outside 127/8 is not a listing (RFC 5782 §2.1).
    assert await dns.dnsbl("127.0.0.6", "bl.test") == DnsblResult()


async def test_dnsbl_ipv6_nibbles_and_mapped_ipv4() -> None:
    assert dns.dnsbl_name("2001:db8::1", "bl.test") == (
        "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.test"
    )
    assert (await dns.dnsbl("2001:db8::1", "bl.test")).codes == ("127.0.0.2",)
    assert not await dns.dnsbl("2001:db8::2", "bl.test")
    assert (await dns.dnsbl("::ffff:127.0.0.2", "bl.test")).codes == ("127.0.0.2",)


async def test_fcrdns_keeps_only_confirmed_names() -> None:
    # liar.example.test points elsewhere, missing.example.test does not exist.
    assert await dns.fcrdns("127.0.0.10") == ["confirmed.example.test"]
    assert await dns.fcrdns("2001:db8::10") == ["v6host.example.test"]
    assert await dns.fcrdns("127.0.0.99") == []


def test_configure_rejects_bad_servers() -> None:
    with pytest.raises(ValueError, match="port"):
        dns.configure(["127.0.0.1"])
    with pytest.raises(ValueError, match="IP address"):
        dns.configure(["ns.example.test:53"])
    with pytest.raises(ValueError, match="positive"):
        dns.configure(["127.0.0.1:53"], timeout=0)
    dns.configure(["[::1]:5353", "127.0.0.1:53"], timeout=2)
    assert dns.servers() == ["[::1]:5353", "127.0.0.1:53"]
    assert dns.timeout() == 2.0


async def test_a_burst_of_lookups_is_answered_by_an_unlimited_nsd(tmp_path: Path) -> None:
    # The benchmarks (benchmarks/library_calls.py) ask nsd thousands of questions a second;
    # Debian's nsd limits answers to 200 a second per /24 unless told not to, and a dropped
    # answer is a lookup that times out.
    with dns_server(tmp_path, {"burst.test": "@ IN A 192.0.2.1\n"}, rate_limit=False) as server:
        dns.configure([server.address], timeout=1.0)
        started = time.monotonic()
        answers = [await dns.a("burst.test") for _ in range(1000)]
    assert answers == [["192.0.2.1"]] * 1000
    assert time.monotonic() - started < 10
