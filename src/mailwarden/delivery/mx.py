"""From a recipient domain (or a route's next hop) to the ordered addresses to connect to.

RFC 5321 §5.1 with Postfix's choices where the RFC leaves room (smtp_addr.c, dns_lookup.c):

- MX records in preference order; equal preferences in random order (§5.1 "SHOULD
  randomize"), drawn from an injectable ``random.Random`` so tests can seed it.
- No MX records (NODATA): the domain itself is the only MX, preference 0 (the implicit MX).
- The domain does not exist (NXDOMAIN): permanent, 550 5.4.4, as Postfix bounces "Host or
  domain name not found".
- A single MX record whose target is "." is a null MX (RFC 7505 §3): the domain accepts no
  mail; 556 5.1.10 (§4.3). A "." among other MX records is not a null MX (RFC 7505 §3 forbids
  mixing them; Postfix then treats "." like any host without an address): it is skipped.
- DNS timeout, SERVFAIL or no server reachable: temporary, 451 4.4.3 (Postfix's status).
- Each MX host's IPv6 addresses come before its IPv4 ones; within one family the order is
  shuffled too (Postfix's ``smtp_randomize_addresses``). ``ip_version`` "ipv4"/"ipv6" asks
  only for A or only for AAAA records. An address listed under two MX hosts is tried once, at
  its better place.
- An MX host without any address is skipped, as long as another MX host has one (Postfix:
  "as long as we are able to look up any host address, we ignore problems"). When none has
  one, the attempt fails as Postfix does with its default ``smtp_defer_if_no_mx_address_found
  = no``: permanent (5.4.4) when every lookup said "no such host/no address", temporary
  (4.4.3) when any lookup failed temporarily (a soft error dominates, smtp_addr.c).
- An MX target that is a CNAME is followed (the resolver follows CNAME chains), but the MX
  name stays the host's name for TLS verification and logs, as Postfix does with its default
  ``smtp_cname_overrides_servername = no``: a CNAME (unsigned DNS data) must not be able to
  change the name a certificate is checked against.
- An MX target that is an IP address written as a name (``MX 10 192.0.2.1.``, against RFC
  5321 §5.1, which wants a domain name) is taken as that address, as Postfix's smtp_addr_one
  does ("numeric domain name in resource data of MX record", logged there as a warning).
- DNSSEC (for DANE, RFC 7672 §2.2): a Target says whether its MX RRset and its host's
  address RRset were both authenticated by the resolver (AD bit, :func:`lib.dns.authenticated`)
  and, when the host name was a CNAME followed securely, the expanded name (the first TLSA
  base domain to try, §2.2.3). An implicit MX is secure when the resolver authenticated the
  denial of MX records (§2.2.2); an address literal never is.
- ``user@[192.0.2.1]`` / ``user@[IPv6:2001:db8::1]`` (RFC 5321 §4.1.3 address literals)
  connect to the address without DNS, only when ``allow_ip_literals``; otherwise they are
  refused permanently (550 5.1.2), since a literal lets any sender aim the node at any
  address.
- A route's next hop ``[host]:port`` skips the MX lookup (the host's A/AAAA records, or the
  address of an IP literal); ``host:port`` looks up the MX records of ``host``.

Lookups go to the resolver of :mod:`mailwarden.lib.dns` (``[node] dns_servers`` and
``dns_timeout``), so configuration points delivery at a given DNS server, as the tests do
with a loopback nsd.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import dns.exception
import dns.name
import dns.resolver

from mailwarden.delivery.errors import DeliveryError, DeliveryReply
from mailwarden.delivery.routes import SMTP_PORT, NextHop
from mailwarden.lib import dns as lib_dns

__all__ = ["IP_VERSIONS", "Target", "resolve_targets"]

IP_VERSIONS = ("any", "ipv4", "ipv6")

# Our own conclusions, as the replies a DSN reports for them (RFC 3463 codes).
NULL_MX = DeliveryReply(556, "5.1.10", "Recipient address has null MX")  # RFC 7505 §4.3
NOT_FOUND = DeliveryReply(550, "5.4.4", "Host or domain name not found")
NO_ADDRESS = DeliveryReply(550, "5.4.4", "No MX host has a valid address record")
DNS_TEMPORARY = DeliveryReply(451, "4.4.3", "Temporary DNS failure")
LITERAL_REFUSED = DeliveryReply(550, "5.1.2", "Delivery to address literals is not allowed")
BAD_LITERAL = DeliveryReply(550, "5.1.2", "Malformed address literal")


@dataclass(frozen=True, order=True)
class Target:
    """One address to connect to. ``host`` is the MX (or route) host name, or the IP
    literal's text: the name TLS verifies and logs show. ``preference`` is the MX preference
    (0 for an implicit MX, a route's host or an address literal). ``dnssec``: the MX RRset
    and this host's address RRset were DNSSEC-authenticated (DANE may apply, RFC 7672 §2.2);
    ``expanded``: the CNAME-expanded host name when the address lookup followed a CNAME
    securely, else None."""

    preference: int
    host: str
    address: str
    port: int = SMTP_PORT
    dnssec: bool = field(default=False, compare=False)
    expanded: str | None = field(default=None, compare=False)


class _Missing(enum.Enum):
    NXDOMAIN = "Host not found"
    NODATA = "Host found but no data record of requested type"


async def _query(name: str, rdtype: str) -> dns.resolver.Answer | _Missing:
    """An answer with records, or why there is none; DnsError when it is not known now."""
    return (await _query_authenticated(name, rdtype))[0]


async def _query_authenticated(
    name: str, rdtype: str
) -> tuple[dns.resolver.Answer | _Missing, bool]:
    """As :func:`_query`, and whether the resolver authenticated the answer (AD), which
    for NODATA is an authenticated denial (RFC 4035 §3.2.3)."""
    lifetime = lib_dns.timeout()
    try:
        query_name = dns.name.from_text(name)
    except dns.exception.DNSException:
        # Not a valid domain name (an empty or over-long label): no such host, as Postfix's
        # dns_lookup answers for names it will not send to the resolver.
        return _Missing.NXDOMAIN, False
    try:
        async with asyncio.timeout(lifetime):
            answer = await lib_dns.async_resolver().resolve(
                query_name, rdtype, lifetime=lifetime, raise_on_no_answer=False, search=False
            )
    except dns.resolver.NXDOMAIN:
        return _Missing.NXDOMAIN, False
    except (TimeoutError, dns.exception.Timeout):
        raise lib_dns.DnsError(name, rdtype, f"no answer within {lifetime:g}s") from None
    except dns.exception.DNSException as error:
        raise lib_dns.DnsError(name, rdtype, str(error) or type(error).__name__) from None
    secure = lib_dns.authenticated(answer)
    return (answer if answer.rrset is not None else _Missing.NODATA), secure


def _fail(reply: DeliveryReply, detail: str, host: str | None = None) -> DeliveryError:
    return DeliveryError(
        DeliveryReply(reply.code, reply.enhanced, f"{reply.text}: {detail}"), stage="dns", host=host
    )


def _temporary(error: lib_dns.DnsError) -> DeliveryError:
    return _fail(DNS_TEMPORARY, f"{error.name} {error.rdtype}: {error.reason}", error.name)


_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _family_allowed(address: _Address, ip_version: str) -> bool:
    return ip_version == "any" or address.version == (4 if ip_version == "ipv4" else 6)


def _ip_of(text: str) -> _Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


@dataclass
class _HostResult:
    """The addresses of one host per family, IPv6 first, and the failures met on the way."""

    families: list[list[str]]
    temporary: lib_dns.DnsError | None = None
    secure: bool = False  # every address RRset found was authenticated
    expanded: str | None = None  # the CNAME-expanded name, when it differs
    missing: str | None = None  # "name type: reason" of the last NXDOMAIN/NODATA


async def _host_addresses(host: str, ip_version: str) -> _HostResult:
    literal = _ip_of(host)
    if literal is not None:  # an MX target or route host that is an address: use it
        if _family_allowed(literal, ip_version):
            return _HostResult([[str(literal)]])
        return _HostResult([], missing=f"{host}: not an {ip_version} address")
    types = [t for t, v in (("AAAA", "ipv6"), ("A", "ipv4")) if ip_version in ("any", v)]
    answers = await asyncio.gather(*(_query(host, t) for t in types), return_exceptions=True)
    result = _HostResult([])
    secure = []
    for rdtype, answer in zip(types, answers, strict=True):
        if isinstance(answer, lib_dns.DnsError):
            result.temporary = answer
        elif isinstance(answer, BaseException):
            raise answer
        elif isinstance(answer, _Missing):
            result.missing = f"name={host} type={rdtype}: {answer.value}"
        else:
            result.families.append([str(ipaddress.ip_address(r.address)) for r in answer])
            secure.append(lib_dns.authenticated(answer))
            canonical = answer.canonical_name.to_text(omit_final_dot=True).lower()
            if canonical != host.lower().rstrip("."):
                result.expanded = canonical
    result.secure = bool(secure) and all(secure)
    return result


def _shuffle_equal_preferences(
    records: Sequence[tuple[int, str]], rng: random.Random
) -> list[tuple[int, str]]:
    """Sorted by preference; hosts of equal preference in random order (RFC 5321 §5.1)."""
    shuffled = list(records)
    rng.shuffle(shuffled)
    return sorted(shuffled, key=lambda record: record[0])  # sort is stable


async def _targets_of_hosts(
    hosts: Sequence[tuple[int, str]],
    port: int,
    ip_version: str,
    rng: random.Random,
    none_found: DeliveryReply,
    mx_secure: bool = False,
) -> list[Target]:
    """The targets of ``hosts`` in their order; when no host has an address, ``none_found``
    (permanent) unless a lookup failed temporarily."""
    results = await asyncio.gather(*(_host_addresses(h, ip_version) for _, h in hosts))
    targets: list[Target] = []
    seen: set[str] = set()
    for (preference, host), result in zip(hosts, results, strict=True):
        secure = mx_secure and result.secure
        expanded = result.expanded if secure else None
        for family in result.families:  # IPv6, then IPv4
            # Shuffled within the family (Postfix's smtp_randomize_addresses), here rather
            # than as the answers arrive, so that a seeded rng gives one order.
            rng.shuffle(family)
            for address in family:
                if address not in seen:
                    seen.add(address)
                    targets.append(Target(preference, host, address, port, secure, expanded))
    if targets:
        return targets
    temporary = next((r.temporary for r in results if r.temporary is not None), None)
    if temporary is not None:  # a soft error dominates hard ones (Postfix smtp_addr.c)
        raise _temporary(temporary)
    details = "; ".join(r.missing for r in results if r.missing) or "no address"
    raise _fail(none_found, details, hosts[0][1] if len(hosts) == 1 else None)


async def _mx_targets(domain: str, port: int, ip_version: str, rng: random.Random) -> list[Target]:
    if _ip_of(domain) is not None:
        # An address has no MX records; Postfix's lookup of a numeric name falls through to
        # the address itself (a next hop given in code without brackets).
        return await _targets_of_hosts([(0, domain)], port, ip_version, rng, NOT_FOUND)
    try:
        answer, secure = await _query_authenticated(domain, "MX")
    except lib_dns.DnsError as error:
        raise _temporary(error) from None
    if answer is _Missing.NXDOMAIN:
        raise _fail(NOT_FOUND, f"name={domain} type=MX: {answer.value}", domain)
    if answer is _Missing.NODATA:
        # RFC 5321 §5.1: no MX records, the domain itself is the (implicit) MX; DANE applies
        # when the denial of MX records was authenticated (RFC 7672 §2.2.2).
        return await _targets_of_hosts([(0, domain)], port, ip_version, rng, NOT_FOUND, secure)
    assert not isinstance(answer, _Missing)
    hosts = [
        (rdata.preference, rdata.exchange.to_text(omit_final_dot=True).lower())
        for rdata in answer
        if rdata.exchange != dns.name.root  # "." among other MX records: no host, skipped
    ]
    if not hosts:  # only "." (RFC 7505 §3: a null MX is the domain's one MX record)
        raise _fail(NULL_MX, f"{domain} accepts no mail (RFC 7505)", domain)
    ordered = _shuffle_equal_preferences(hosts, rng)
    return await _targets_of_hosts(ordered, port, ip_version, rng, NO_ADDRESS, secure)


def _literal_target(
    domain: str, allow_ip_literals: bool, ip_version: str, port: int = SMTP_PORT
) -> Target:
    """``[192.0.2.1]`` or ``[IPv6:2001:db8::1]`` (RFC 5321 §4.1.3) as its one target."""
    if not allow_ip_literals:
        raise _fail(LITERAL_REFUSED, f"{domain} (delivery.allow_ip_literals is off)", domain)
    inner = domain[1:-1]
    v6 = inner[:5].lower() == "ipv6:"
    address = _ip_of(inner[5:] if v6 else inner)
    if address is None or (address.version == 6) != v6:
        raise _fail(BAD_LITERAL, domain, domain)
    if not _family_allowed(address, ip_version):
        raise _fail(NO_ADDRESS, f"{domain} is not an {ip_version} address", domain)
    return Target(0, domain, str(address), port)


async def resolve_targets(
    domain: str,
    *,
    hop: NextHop | None = None,
    allow_ip_literals: bool = False,
    ip_version: str = "any",
    rng: random.Random | None = None,
    port: int = SMTP_PORT,
) -> list[Target]:
    """The ordered connection targets for a recipient domain, or for a route's next hop.

    MX by preference, random among equal preferences, each host's IPv6 addresses before IPv4
    ones (``ip_version`` "ipv4"/"ipv6" restricts); no MX: the domain's own A/AAAA (RFC 5321
    §5.1); ``hop`` ``[host]:port``: no MX lookup; ``host:port``: MX lookup of ``host``. The
    module docstring says what Postfix behaviour each case follows. ``port``: where MX hosts
    and address literals are reached (25; ``[delivery] port``); a next hop has its own.

    Raises DeliveryError (stage ``dns``): null MX (RFC 7505) 556 5.1.10; NXDOMAIN, or no
    address for any MX host, 550 5.4.4; DNS timeout/SERVFAIL 451 4.4.3 (temporary); an address
    literal without ``allow_ip_literals`` 550 5.1.2. ValueError for an unknown ``ip_version``.
    """
    if ip_version not in IP_VERSIONS:
        raise ValueError(f"ip_version must be one of {', '.join(IP_VERSIONS)}, got {ip_version!r}")
    rng = rng if rng is not None else random.Random()
    if hop is not None:
        if hop.mx_lookup:
            return await _mx_targets(hop.host, hop.port, ip_version, rng)
        return await _targets_of_hosts([(0, hop.host)], hop.port, ip_version, rng, NOT_FOUND)
    domain = domain.strip().lower().rstrip(".")
    if domain.startswith("[") and domain.endswith("]"):
        return [_literal_target(domain, allow_ip_literals, ip_version, port)]
    return await _mx_targets(domain, port, ip_version, rng)
