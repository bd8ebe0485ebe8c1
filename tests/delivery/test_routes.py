"""Routes (pure): next-hop syntax, domain matching in file order, and the choice of a source
address from a pool."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailwarden.delivery.routes import (
    NextHop,
    Route,
    RouteTable,
    SourceAddress,
    choose_source,
    domain_matches,
    format_next_hop,
    parse_next_hop,
)
from mailwarden.delivery.tls import TlsPolicy

ROOT = Path(__file__).resolve().parents[2]

# -- next hops ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "hop"),
    [
        ("[10.0.0.5]:2525", NextHop("10.0.0.5", 2525, mx_lookup=False)),
        ("[mx.example]", NextHop("mx.example", 25, mx_lookup=False)),
        ("[MX.Example.]:26", NextHop("mx.example", 26, mx_lookup=False)),
        ("[2001:db8::1]:25", NextHop("2001:db8::1", 25, mx_lookup=False)),
        ("[ipv6:2001:DB8:0::1]", NextHop("2001:db8::1", 25, mx_lookup=False)),
        ("relay.example:587", NextHop("relay.example", 587, mx_lookup=True)),
        ("relay.example", NextHop("relay.example", 25, mx_lookup=True)),
        ("Relay.Example.", NextHop("relay.example", 25, mx_lookup=True)),
    ],
)
def test_next_hop_forms(text, hop):
    assert parse_next_hop(text) == hop


def test_default_port_applies_only_without_a_port():
    assert parse_next_hop("[lmtp.example]", default_port=24).port == 24
    assert parse_next_hop("[lmtp.example]:2424", default_port=24).port == 2424


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "expected a next hop"),
        ("[10.0.0.5", "expected ']'"),
        ("[10.0.0.5]x", "':port' or nothing"),
        ("[10.0.0.5]:", "port from 1 to 65535"),
        ("[10.0.0.5]:0", "port from 1 to 65535"),
        ("relay.example:65536", "port from 1 to 65535"),
        ("relay.example:smtp", "port from 1 to 65535"),
        ("10.0.0.5:25", "goes in brackets, as in '[10.0.0.5]'"),
        ("2001:db8::1", "IPv6 next hop goes in brackets"),
        ("[ipv6:10.0.0.5]", "not an IPv6 address"),
        ("[bad_name]", "IP address or a host name inside the brackets"),
        ("-relay-.example", "host name or '[address]'"),
    ],
)
def test_bad_next_hops_say_what_was_expected(text, reason):
    with pytest.raises(ValueError) as caught:
        parse_next_hop(text)
    assert reason in str(caught.value)


@given(st.one_of(st.text(max_size=40), st.text("[]:.0123456789abcdefipv6-_ \n", max_size=30)))
def test_any_text_is_a_next_hop_or_a_value_error(text):
    try:
        hop = parse_next_hop(text)
    except ValueError:
        return
    assert 0 < hop.port < 65536
    assert parse_next_hop(format_next_hop(hop)) == hop


_LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
_NAME = (
    st.lists(_LABEL, min_size=1, max_size=4)
    .map(".".join)
    .filter(
        lambda name: not name.replace(".", "").isdigit()  # all-digit names read as IPv4 attempts
    )
)
_IP = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str)


@given(
    host=st.one_of(_NAME, _IP),
    port=st.integers(1, 65535),
    mx_lookup=st.booleans(),
)
def test_next_hops_round_trip(host, port, mx_lookup):
    is_ip = (host != "" and host[0].isdigit() and _is_ip(host)) or ":" in host
    hop = NextHop(host, port, mx_lookup=mx_lookup and not is_ip)
    text = format_next_hop(hop)
    assert parse_next_hop(text) == hop
    assert str(hop) == text


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


# -- domain matching ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "domain", "matches"),
    [
        ("example.net", "example.net", True),
        ("example.net", "EXAMPLE.net.", True),
        ("example.net", "mail.example.net", False),  # exact: not the subdomains
        (".example.net", "mail.example.net", True),
        (".example.net", "a.b.example.net", True),
        (".example.net", "example.net", False),  # subdomains only (Postfix transport(5))
        (".example.net", "badexample.net", False),
        ("example.net", "badexample.net", False),
        ("*", "anything.example", True),
        ("*", "[192.0.2.1]", True),
    ],
)
def test_domain_patterns(pattern, domain, matches):
    assert domain_matches(pattern, domain) is matches


def route(*domains: str, hop: str | None = None) -> Route:
    return Route(
        domains=domains,
        next_hop=parse_next_hop(hop) if hop else None,
        protocol="smtp",
        auth=None,
        tls=TlsPolicy(),
        source_ips=(),
    )


def test_routes_are_tried_in_order_and_the_default_route_takes_the_rest():
    first = route("example.net", hop="[10.0.0.1]")
    second = route(".example.net", "example.org", hop="[10.0.0.2]")
    catch_all = route("*", hop="[10.0.0.3]")
    default = route("*")
    table = RouteTable([first, second, catch_all], default)
    assert table.route_for("example.net") is first
    assert table.route_for("Mail.Example.NET") is second
    assert table.route_for("example.org") is second
    assert table.route_for("other.example") is catch_all
    assert RouteTable([first, second], default).route_for("other.example") is default


def test_a_routes_domains_share_its_next_hop_as_destination():
    relay = route(".example.net", hop="[10.0.0.1]:2525")
    assert relay.destination("a.example.net") == relay.destination("b.example.net")
    assert relay.destination("a.example.net") == "[10.0.0.1]:2525"
    assert route("*").destination("Example.ORG.") == "example.org"


# -- source addresses -----------------------------------------------------------------------

POOL = tuple(
    SourceAddress(address, f"out{n}.example")
    for n, address in enumerate(["192.0.2.10", "192.0.2.11", "192.0.2.12", "2001:db8::10"])
)


def test_empty_pool_lets_the_kernel_choose():
    assert choose_source((), "example.net") is None


def test_choice_is_stable_per_key_and_spread_over_the_pool():
    keys = [f"domain{n}.example" for n in range(2000)]
    chosen = [choose_source(POOL, key) for key in keys]
    assert chosen == [choose_source(POOL, key) for key in keys]
    counts = Counter(source.address for source in chosen if source)
    assert set(counts) == {source.address for source in POOL}
    assert min(counts.values()) > 2000 / len(POOL) * 0.8


def test_choice_is_the_same_in_another_process():
    # Workers are separate processes: a salted hash() would give each its own answer.
    script = (
        "from mailwarden.delivery.routes import SourceAddress, choose_source\n"
        f"pool = {POOL!r}\n"
        "print([choose_source(pool, f'd{n}').address for n in range(50)])\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == str([choose_source(POOL, f"d{n}").address for n in range(50)])


def test_removing_an_address_moves_only_its_keys():
    keys = [f"k{n}" for n in range(500)]
    before = {key: choose_source(POOL, key) for key in keys}
    smaller = POOL[1:]
    for key in keys:
        if before[key] != POOL[0]:
            assert choose_source(smaller, key) == before[key]


def test_the_chosen_source_matches_the_remote_address_family_and_brings_its_helo():
    for n in range(50):
        v4 = choose_source(POOL, f"k{n}", for_address="198.51.100.1")
        v6 = choose_source(POOL, f"k{n}", for_address="2001:db8:1::25")
        assert v4 is not None and ipaddress.ip_address(v4.address).version == 4
        assert v6 == POOL[3]
    only_v4 = POOL[:3]
    assert choose_source(only_v4, "k", for_address="2001:db8:1::25") is None
    with_pool = Route(("*",), None, "smtp", None, TlsPolicy(), POOL, helo="node.example")
    source = with_pool.source_for("example.net", for_address="192.0.2.99")
    assert source is not None and with_pool.helo_for(source) == source.helo
    assert with_pool.helo_for(None) == "node.example"
