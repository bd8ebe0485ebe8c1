"""mailwarden.lib.spf: RFC 7208 results against records served by nsd on loopback."""

from __future__ import annotations

import pytest
from tests.support.dns_server import silent_server

from mailwarden.lib import dns, spf
from mailwarden.lib.spf import SpfResult

pytestmark = pytest.mark.usefixtures("resolver")


async def test_ip4_pass_and_fail() -> None:
    passed = await spf.check("192.0.2.77", "alice@spf.test", "mail.client.test")
    assert passed.result == "pass"
    assert passed
    assert passed.identity == "mailfrom"
    assert passed.domain == "spf.test"
    failed = await spf.check("192.0.2.200", "alice@spf.test", "mail.client.test")
    assert failed.result == "fail"
    assert not failed


async def test_include_passes_for_the_included_domains_address() -> None:
    assert (await spf.check("198.51.100.7", "bob@spf.test", "x.test")).result == "pass"
    assert (await spf.check("198.51.100.8", "bob@spf.test", "x.test")).result == "fail"


async def test_a_mechanism_with_softfail() -> None:
    assert (await spf.check("203.0.113.5", "c@soft.spf.test", "x.test")).result == "pass"
    assert (await spf.check("203.0.113.6", "c@soft.spf.test", "x.test")).result == "softfail"


async def test_mx_mechanism() -> None:
    assert (await spf.check("203.0.113.25", "d@mx.spf.test", "x.test")).result == "pass"
    assert (await spf.check("203.0.113.26", "d@mx.spf.test", "x.test")).result == "fail"


async def test_neutral_none_and_permerror() -> None:
    assert (await spf.check("192.0.2.1", "e@neutral.spf.test", "x.test")).result == "neutral"
    # example.test publishes TXT records, none of them SPF (RFC 7208 §4.5: "none").
    assert (await spf.check("192.0.2.1", "e@example.test", "x.test")).result == "none"
    # Two SPF records (RFC 7208 §4.5): permerror.
    assert (await spf.check("192.0.2.1", "e@two.spf.test", "x.test")).result == "permerror"


async def test_null_sender_checks_the_helo_identity() -> None:
    result = await spf.check("203.0.113.80", "", "helo.spf.test")
    assert result == SpfResult("pass", "sender SPF authorized", "helo", "helo.spf.test")
    assert (await spf.check("203.0.113.81", "", "helo.spf.test")).result == "fail"


async def test_fail_carries_the_domains_explanation() -> None:
    result = await spf.check("192.0.2.9", "f@exp.spf.test", "x.test")
    assert result.result == "fail"
    assert result.explanation == "192.0.2.9 is not one of exp.spf.test's servers"


async def test_servfail_in_an_include_is_temperror() -> None:
    assert (await spf.check("192.0.2.200", "g@broken.spf.test", "x.test")).result == "temperror"


async def test_a_silent_server_is_temperror_within_the_limit() -> None:
    with silent_server() as address:
        dns.configure([address], timeout=0.5)
        result = await spf.check("192.0.2.77", "alice@spf.test", "x.test", limit=2)
    assert result.result == "temperror"


async def test_ipv6_client_against_ip4_only_policy_fails() -> None:
    assert (await spf.check("2001:db8::5", "a@spf.test", "x.test")).result == "fail"
    with pytest.raises(ValueError):
        await spf.check("not-an-ip", "a@spf.test", "x.test")


async def test_malformed_domains_are_none_without_dns() -> None:
    # RFC 7208 §4.3; with a DNS server that never answers, a lookup would be temperror.
    with silent_server() as address:
        dns.configure([address], timeout=0.5)
        literal = await spf.check("192.0.2.1", "a@[192.0.2.1]", "x.test")
        assert literal == SpfResult(
            "none", "no SPF record for a malformed domain", "mailfrom", "[192.0.2.1]"
        )
        assert (await spf.check("192.0.2.1", "", "localhost")).result == "none"
        assert (await spf.check("192.0.2.1", "", "")).result == "none"
