"""MX resolution against a real DNS server (nsd on loopback, see conftest.py): the targets a
delivery attempt would connect to, in order, and the reply every failure stands for."""

from __future__ import annotations

import random

import pytest
from tests.support.dns_server import silent_server

from mailwarden.delivery.errors import DeliveryError
from mailwarden.delivery.mx import Target, resolve_targets
from mailwarden.delivery.routes import NextHop, parse_next_hop
from mailwarden.lib import dns

pytestmark = pytest.mark.usefixtures("resolver")


def addresses(targets: list[Target]) -> list[str]:
    return [target.address for target in targets]


async def failure(domain: str, **options: object) -> DeliveryError:
    with pytest.raises(DeliveryError) as caught:
        await resolve_targets(domain, **options)  # type: ignore[arg-type]
    assert caught.value.stage == "dns"
    return caught.value


async def test_mx_hosts_in_preference_order():
    targets = await resolve_targets("order.delivery.test")
    assert targets == [
        Target(10, "mx10.delivery.test", "192.0.2.10", 25),
        Target(20, "mx20.delivery.test", "192.0.2.20", 25),
        Target(30, "mx30.delivery.test", "192.0.2.30", 25),
    ]


async def test_equal_preferences_are_shuffled_by_the_given_random():
    equal = {"e1", "e2", "e3", "e4"}
    orders = []
    for seed in range(40):
        targets = await resolve_targets("equal.delivery.test", rng=random.Random(seed))
        hosts = [target.host.split(".")[0] for target in targets]
        assert set(hosts[:4]) == equal and hosts[4] == "backup"  # preference order holds
        orders.append(tuple(hosts))
    # Every equal-preference host gets to be first (the load spreads over all of them)...
    assert {order[0] for order in orders} == equal
    # ... and a seed gives one order, so a test or a replay can pin it.
    again = await resolve_targets("equal.delivery.test", rng=random.Random(7))
    assert tuple(t.host.split(".")[0] for t in again) == orders[7]


async def test_no_mx_falls_back_to_the_domains_own_addresses_ipv6_first():
    targets = await resolve_targets("implicit.delivery.test")
    assert targets == [
        Target(0, "implicit.delivery.test", "2001:db8::50", 25),
        Target(0, "implicit.delivery.test", "192.0.2.50", 25),
    ]


async def test_ipv6_addresses_come_before_ipv4_for_each_host():
    targets = await resolve_targets("dual.delivery.test", rng=random.Random(3))
    assert [t.host for t in targets] == ["ds.delivery.test"] * 4 + ["mx20.delivery.test"]
    assert set(addresses(targets[:2])) == {"2001:db8::80", "2001:db8::81"}
    assert set(addresses(targets[2:4])) == {"192.0.2.80", "192.0.2.81"}


async def test_a_hosts_addresses_are_shuffled_within_each_family_reproducibly():
    firsts = set()
    for seed in range(20):
        orders = {
            tuple(addresses(await resolve_targets("dual.delivery.test", rng=random.Random(seed))))
            for _ in range(3)
        }
        assert len(orders) == 1  # one seed, one order, however the DNS answers interleave
        (order,) = orders
        firsts.add(order[0])
    assert firsts == {"2001:db8::80", "2001:db8::81"}


@pytest.mark.parametrize(
    ("ip_version", "expected"),
    [
        ("ipv4", {"192.0.2.80", "192.0.2.81", "192.0.2.20"}),
        ("ipv6", {"2001:db8::80", "2001:db8::81"}),
    ],
)
async def test_ip_version_restricts_the_addresses(ip_version, expected):
    targets = await resolve_targets("dual.delivery.test", ip_version=ip_version)
    assert set(addresses(targets)) == expected


async def test_ipv6_only_with_a_host_that_has_only_ipv4_is_no_address():
    error = await failure("order.delivery.test", ip_version="ipv6")
    assert (error.reply.code, error.reply.enhanced) == (550, "5.4.4")


async def test_null_mx_is_a_permanent_556_5_1_10():
    error = await failure("nullmx.delivery.test")
    assert (error.reply.code, error.reply.enhanced) == (556, "5.1.10")
    assert error.permanent and not error.reply.remote
    assert error.host == "nullmx.delivery.test"


async def test_null_mx_mixed_with_a_real_mx_is_skipped_not_obeyed():
    # RFC 7505 §3 forbids the mix; the "." is then a host without address (as in Postfix).
    targets = await resolve_targets("mixednull.delivery.test")
    assert targets == [Target(10, "mx10.delivery.test", "192.0.2.10", 25)]


async def test_nxdomain_is_permanent_like_postfix():
    error = await failure("missing.delivery.test")
    assert (error.reply.code, error.reply.enhanced) == (550, "5.4.4")
    assert error.permanent
    assert "missing.delivery.test" in error.reply.text


async def test_domain_without_mx_or_address_is_permanent():
    error = await failure("bare.delivery.test")
    assert (error.reply.code, error.reply.enhanced) == (550, "5.4.4")


async def test_servfail_is_temporary_4_4_3():
    error = await failure("example.broken.test")
    assert (error.reply.code, error.reply.enhanced) == (451, "4.4.3")
    assert not error.permanent
    assert "SERVFAIL" in error.reply.text


async def test_dns_timeout_is_temporary_4_4_3():
    with silent_server() as address:
        dns.configure([address], timeout=0.5)
        error = await failure("order.delivery.test")
    assert (error.reply.code, error.reply.enhanced) == (451, "4.4.3")
    assert "0.5s" in error.reply.text


async def test_cname_mx_target_is_followed_but_keeps_the_mx_name():
    # The name TLS verifies stays the MX name (Postfix: smtp_cname_overrides_servername=no).
    targets = await resolve_targets("cname.delivery.test")
    assert targets == [Target(10, "alias.delivery.test", "192.0.2.60", 25)]


async def test_mx_hosts_without_address_are_skipped():
    targets = await resolve_targets("noaddr.delivery.test")
    assert targets == [Target(30, "mx30.delivery.test", "192.0.2.30", 25)]


async def test_no_mx_host_with_an_address_is_permanent():
    # Postfix's default smtp_defer_if_no_mx_address_found = no: the mail is returned.
    error = await failure("allghosts.delivery.test")
    assert (error.reply.code, error.reply.enhanced) == (550, "5.4.4")
    assert "ghost.delivery.test" in error.reply.text


async def test_no_address_with_a_temporary_lookup_failure_is_temporary():
    # A soft error dominates hard ones: the address may exist once DNS answers again.
    error = await failure("softghosts.delivery.test")
    assert (error.reply.code, error.reply.enhanced) == (451, "4.4.3")


async def test_a_failing_primary_lookup_leaves_the_backup():
    targets = await resolve_targets("softfirst.delivery.test")
    assert targets == [Target(20, "mx20.delivery.test", "192.0.2.20", 25)]


async def test_numeric_mx_target_is_taken_as_the_address():
    targets = await resolve_targets("numeric.delivery.test")
    assert targets == [Target(10, "192.0.2.70", "192.0.2.70", 25)]


async def test_an_address_under_two_mx_hosts_is_tried_once():
    targets = await resolve_targets("dup.delivery.test")
    assert targets == [Target(10, "mx10.delivery.test", "192.0.2.10", 25)]


async def test_names_compare_case_insensitively_and_without_the_final_dot():
    assert await resolve_targets("ORDER.Delivery.Test.") == await resolve_targets(
        "order.delivery.test"
    )


# -- address literals (RFC 5321 §4.1.3) ---------------------------------------------------


async def test_address_literal_refused_unless_allowed():
    error = await failure("[192.0.2.1]")
    assert (error.reply.code, error.reply.enhanced) == (550, "5.1.2")
    assert "allow_ip_literals" in error.reply.text


@pytest.mark.parametrize(
    ("domain", "address"),
    [("[192.0.2.1]", "192.0.2.1"), ("[IPv6:2001:DB8::1]", "2001:db8::1")],
)
async def test_address_literal_when_allowed(domain, address):
    targets = await resolve_targets(domain, allow_ip_literals=True)
    assert addresses(targets) == [address]
    assert targets[0].port == 25


@pytest.mark.parametrize("domain", ["[300.1.2.3]", "[2001:db8::1]", "[IPv6:192.0.2.1]"])
async def test_malformed_address_literal_is_permanent(domain):
    error = await failure(domain, allow_ip_literals=True)
    assert (error.reply.code, error.reply.enhanced) == (550, "5.1.2")


# -- route next hops ------------------------------------------------------------------------


async def test_bracketed_next_hop_skips_the_mx_lookup():
    targets = await resolve_targets(
        "anything.example", hop=parse_next_hop("[relay.delivery.test]:2525")
    )
    assert targets == [Target(0, "relay.delivery.test", "192.0.2.90", 2525)]


async def test_plain_next_hop_looks_up_the_hosts_mx():
    targets = await resolve_targets(
        "anything.example", hop=parse_next_hop("relay.delivery.test:587")
    )
    assert targets == [Target(10, "relaymx.delivery.test", "192.0.2.91", 587)]


@pytest.mark.parametrize(
    ("hop", "address"), [("[10.0.0.5]:2525", "10.0.0.5"), ("[ipv6:2001:db8::5]", "2001:db8::5")]
)
async def test_ip_next_hop_needs_no_dns(hop, address):
    dns.configure(["127.0.0.1:9"], timeout=0.5)  # nothing answers there: no lookup may happen
    targets = await resolve_targets("[192.0.2.1]", hop=parse_next_hop(hop))
    assert addresses(targets) == [address]


async def test_next_hop_that_does_not_exist_is_permanent():
    error = await failure("x.example", hop=NextHop("missing.delivery.test", 25, mx_lookup=False))
    assert (error.reply.code, error.reply.enhanced) == (550, "5.4.4")
