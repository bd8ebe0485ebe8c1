"""Find the addresses to ping, in the order smtpping 1.1 tries them.

``@server`` given: an IP literal is used as is; a name is looked up as A then AAAA
(each list sorted), and when DNS gives nothing the name itself is kept for the
system resolver (so /etc/hosts names still work). No ``@server``: the recipient
domain's MX hosts, by preference then name, each expanded to its A and AAAA
addresses (the host name itself when it has none); a domain without MX falls back
on its own A/AAAA; a failed MX query (NXDOMAIN, SERVFAIL, timeout) prints
``failed to resolve <domain>`` and leaves nothing to ping.

The environment variable ``SMTPPING_NAMESERVER`` (``ip`` or ``ip:port``) replaces
the system's nameservers; the tests use it to point at a loopback DNS server.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import dns.asyncresolver

NAMESERVER_ENV = "SMTPPING_NAMESERVER"


def make_resolver() -> dns.asyncresolver.Resolver:
    """A dnspython resolver, aimed at $SMTPPING_NAMESERVER when it is set."""
    # Imported here: dnspython costs 40 ms of start-up that @IP runs never need.
    import dns.asyncresolver
    import dns.resolver

    override = os.environ.get(NAMESERVER_ENV)
    if not override:
        try:
            return dns.asyncresolver.Resolver()
        except dns.resolver.NoResolverConfiguration:
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = ["127.0.0.1"]
            return resolver
    host, _, port = override.rpartition(":") if override.count(":") == 1 else (override, "", "")
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [host or override]
    if port:
        resolver.port = int(port)
    resolver.timeout = 2.0
    resolver.lifetime = 5.0
    return resolver


def is_ip_literal(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


async def _lookup(
    resolver: dns.asyncresolver.Resolver, name: str, rdtype: str, debug: bool
) -> list[str] | None:
    """Records of one type, sorted; [] for an empty answer; None when the lookup failed."""
    import dns.exception
    import dns.resolver

    try:
        answer = await resolver.resolve(name, rdtype, search=False)
    except dns.resolver.NoAnswer:
        return []
    except (dns.exception.DNSException, OSError):
        if debug:
            print(f"warning: failed to resolve {rdtype} for {name}", file=sys.stderr)
        return None
    if rdtype == "MX":
        ranked = sorted(
            (record.preference, record.exchange.to_text(omit_final_dot=True)) for record in answer
        )
        return [host for _, host in ranked]
    return sorted(record.to_text() for record in answer)


async def _addresses_of(resolver: dns.asyncresolver.Resolver, name: str, debug: bool) -> list[str]:
    found: list[str] = []
    for rdtype in ("A", "AAAA"):
        found.extend(await _lookup(resolver, name, rdtype, debug) or [])
    return found


async def resolve_targets(recipient: str, server: str | None, *, debug: bool = False) -> list[str]:
    """Addresses (IP strings, or names left for getaddrinfo) to try in order.

    Never raises for DNS trouble: failures print 1.1's messages on stderr and give
    fewer (possibly no) addresses.
    """
    if server is not None:
        if is_ip_literal(server):
            return [server]
        return await _addresses_of(make_resolver(), server, debug) or [server]
    resolver = make_resolver()
    domain = recipient.rpartition("@")[2]
    exchanges = await _lookup(resolver, domain, "MX", debug)
    if exchanges is None:
        print(f"failed to resolve {domain}", file=sys.stderr)
        return []
    if not exchanges:
        if debug:
            print(f" no mx, failling back on A/AAAA record for {domain}", file=sys.stderr)
        return await _addresses_of(resolver, domain, debug)
    addresses: list[str] = []
    for exchange in exchanges:
        if is_ip_literal(exchange):
            addresses.append(exchange)
            continue
        addresses.extend(await _addresses_of(resolver, exchange, debug) or [exchange])
    return addresses
