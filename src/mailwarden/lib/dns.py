"""DNS lookups for policy scripts: A, AAAA, MX, TXT, PTR, TLSA, DNSBL and FCrDNS.

Every lookup is asynchronous (dnspython's asyncio resolver) and bounded by a timeout. The
answers are typed and the failure modes are kept apart, because a script must tell them apart:

- the name does not exist (NXDOMAIN) or has no record of that type (NODATA): an empty list;
  the answer is final, the script may act on it;
- no answer in time, SERVFAIL, REFUSED, or no server reachable: :class:`DnsError`, a temporary
  failure the script should turn into a 4xx (``Defer``), never into a 5xx.

The resolver is the node's ``[node] dns_servers`` / ``dns_timeout`` (see docs/configuration.md),
set by each worker through :func:`configure`; with no servers the system's resolv.conf is used.
Answers are cached in the process for their TTL (:mod:`mailwarden.lib.dns_cache`,
``[library] dns_cache_size``).
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.rdtypes.tlsabase
import dns.resolver
import dns.reversename

from mailwarden.config.listen import parse_listen_address
from mailwarden.lib import dns_cache

__all__ = [
    "DEFAULT_TIMEOUT",
    "DnsError",
    "DnsblResult",
    "MxRecord",
    "TlsaRecord",
    "a",
    "aaaa",
    "async_resolver",
    "authenticated",
    "configure",
    "dnsbl",
    "fcrdns",
    "mx",
    "ptr",
    "servers",
    "timeout",
    "tlsa",
    "tlsa_authenticated",
    "txt",
]

DEFAULT_TIMEOUT = 5.0

# dnspython refuses to build a TLSA record whose SHA-256/512 data has the wrong length, and
# then the whole reply fails to parse: one malformed record in a TLSA RRset would turn the
# lookup into a timeout, and DANE would defer the host's mail for good. Such a record can
# never match and should only be unusable, like a record with unknown parameters, which
# mailwarden.delivery.dane.usable decides; so the lengths are not checked while parsing.
if isinstance(getattr(dns.rdtypes.tlsabase.TLSABase, "_cert_length_by_mtype", None), dict):
    dns.rdtypes.tlsabase.TLSABase._cert_length_by_mtype = {}


class DnsError(Exception):
    """A temporary DNS failure: timeout, SERVFAIL/REFUSED, or no server reachable.

    Scripts map it to a 4xx (the lookup may succeed later), e.g. ``raise Defer(...)``."""

    def __init__(self, name: str, rdtype: str, reason: str) -> None:
        super().__init__(f"DNS lookup {name} {rdtype} failed: {reason}")
        self.name = name
        self.rdtype = rdtype
        self.reason = reason


@dataclass(frozen=True, slots=True, order=True)
class MxRecord:
    """One MX record; lists of them sort by preference (RFC 5321 §5.1), then host."""

    preference: int
    host: str  # without the trailing dot; "" for a null MX (RFC 7505: ".")


@dataclass(frozen=True, slots=True)
class TlsaRecord:
    """One TLSA record (RFC 6698 §2.1): certificate usage, selector, matching type, data."""

    usage: int
    selector: int
    mtype: int
    data: bytes

    @property
    def hex(self) -> str:
        """The association data as lower-case hex, as zone files and tools show it."""
        return self.data.hex()


@dataclass(frozen=True, slots=True)
class DnsblResult:
    """What a DNS block list says of an address: its 127.0.0.x return codes (RFC 5782 §2.1),
    empty when the address is not listed, and the TXT reason if the list publishes one.
    True when listed."""

    codes: tuple[str, ...] = ()
    reason: str | None = None

    def __bool__(self) -> bool:
        return bool(self.codes)


# -- the resolver ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Settings:
    servers: tuple[tuple[str, int], ...] = ()
    timeout: float = DEFAULT_TIMEOUT


_R = TypeVar("_R", bound=dns.resolver.BaseResolver)

_settings = _Settings()
_resolver: dns.asyncresolver.Resolver | None = None
_sync_resolver: dns.resolver.Resolver | None = None


def parse_server(text: str) -> tuple[str, int]:
    """``"127.0.0.1:5353"`` or ``"[::1]:53"`` into ``(ip, port)``; ValueError otherwise."""
    host, port = parse_listen_address(text)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address; name DNS servers by IP") from None
    if port == 0:
        raise ValueError("port 0 is no DNS server's port; use 53 for the standard one")
    return host, port


def configure(server_list: Iterable[str] = (), timeout: float = DEFAULT_TIMEOUT) -> None:
    """Use these DNS servers (``"ip:port"``, ``"[ipv6]:port"``) and this default timeout in
    seconds for every later lookup of this process; no servers: the system's resolv.conf.

    Raises ValueError for a malformed server address or a timeout that is not positive."""
    parsed = tuple(parse_server(text) for text in server_list)
    if not timeout > 0:
        raise ValueError(f"the DNS timeout must be positive, got {timeout!r}")
    global _settings, _resolver, _sync_resolver
    new = _Settings(parsed, float(timeout))
    if new != _settings:
        _settings, _resolver, _sync_resolver = new, None, None
        dns_cache.clear()  # other servers may answer otherwise (split DNS, a test's nsd)


def servers() -> list[str]:
    """The configured servers as ``ip:port`` (empty: the system's resolv.conf)."""
    return [f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in _settings.servers]


def timeout() -> float:
    """The default timeout of a lookup, in seconds."""
    return _settings.timeout


def make_sync_resolver() -> dns.resolver.Resolver:
    """A blocking resolver with the configured servers (for libraries that need one, such as
    pyspf in its thread); one per configuration, shared, as it keeps no per-query state."""
    global _sync_resolver
    resolver = _sync_resolver
    if resolver is None:
        resolver = _sync_resolver = _build(dns.resolver.Resolver)
    return resolver


def _build(kind: type[_R]) -> _R:
    if not _settings.servers:
        resolver = kind()  # /etc/resolv.conf
    else:
        resolver = kind(configure=False)
        resolver.nameservers = [dns.nameserver.Do53Nameserver(h, p) for h, p in _settings.servers]
    resolver.lifetime = _settings.timeout
    # AD set in every query asks a validating resolver to say whether it authenticated the
    # answer (RFC 6840 §5.7), without DO's signatures in every reply; DANE trusts that bit
    # (RFC 7672 §2.1), so the configured resolver should be a local validating one.
    resolver.flags = dns.flags.RD | dns.flags.AD
    # Each server gets an equal share of the lookup's time before the next one is asked, so
    # that a silent first server leaves time for the second (dnspython's per-try timeout).
    resolver.timeout = _settings.timeout / max(1, len(resolver.nameservers))
    dns_cache.attach(resolver)  # answers within their TTL come from memory
    return resolver


def async_resolver() -> dns.asyncresolver.Resolver:
    """The asyncio resolver with the configured servers and timeout, shared by this process:
    the script library's lookups and delivery's MX resolution (:mod:`mailwarden.delivery.mx`,
    which needs NXDOMAIN and NODATA apart) ask the same servers."""
    return _async_resolver()


def _async_resolver() -> dns.asyncresolver.Resolver:
    global _resolver
    if _resolver is None:
        _resolver = _build(dns.asyncresolver.Resolver)
    return _resolver


async def _resolve(
    name: str | dns.name.Name, rdtype: str, timeout: float | None
) -> dns.resolver.Answer | None:
    """The answer, or None for NXDOMAIN / no records; DnsError for a temporary failure."""
    lifetime = _settings.timeout if timeout is None else timeout
    text = name.to_text(omit_final_dot=True) if isinstance(name, dns.name.Name) else name
    try:
        # asyncio.timeout as well as the lifetime: the caller's bound holds even if a
        # server trickles answers that dnspython keeps waiting on.
        async with asyncio.timeout(lifetime):
            answer = await _async_resolver().resolve(
                name, rdtype, lifetime=lifetime, raise_on_no_answer=False, search=False
            )
    except dns.resolver.NXDOMAIN:
        return None
    except (TimeoutError, dns.exception.Timeout):
        raise DnsError(text, rdtype, f"no answer within {lifetime:g}s") from None
    except dns.resolver.NoNameservers as error:
        raise DnsError(text, rdtype, _servfail_reason(error)) from None
    except dns.exception.DNSException as error:
        raise DnsError(text, rdtype, str(error) or type(error).__name__) from None
    return answer if answer.rrset is not None else None


def _servfail_reason(error: dns.resolver.NoNameservers) -> str:
    errors = error.kwargs.get("errors") or []
    details = sorted({str(item[3]) for item in errors if len(item) > 3})
    return "no server could answer" + (f" ({'; '.join(details)})" if details else "")


def _host(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True) if name != dns.name.root else ""


# -- lookups --------------------------------------------------------------------------------


async def a(name: str, *, timeout: float | None = None) -> list[str]:
    """The IPv4 addresses of ``name`` (CNAMEs followed)."""
    answer = await _resolve(name, "A", timeout)
    return [] if answer is None else [rdata.address for rdata in answer]


async def aaaa(name: str, *, timeout: float | None = None) -> list[str]:
    """The IPv6 addresses of ``name``, in canonical (compressed) form."""
    answer = await _resolve(name, "AAAA", timeout)
    return [] if answer is None else [str(ipaddress.IPv6Address(r.address)) for r in answer]


async def mx(name: str, *, timeout: float | None = None) -> list[MxRecord]:
    """The MX records of ``name``, sorted by preference then host."""
    answer = await _resolve(name, "MX", timeout)
    if answer is None:
        return []
    return sorted(MxRecord(rdata.preference, _host(rdata.exchange)) for rdata in answer)


async def txt(name: str, *, timeout: float | None = None) -> list[str]:
    """The TXT records of ``name``, each one's character-strings joined (RFC 7208 §3.3);
    bytes that are not UTF-8 are replaced."""
    answer = await _resolve(name, "TXT", timeout)
    if answer is None:
        return []
    return [b"".join(rdata.strings).decode("utf-8", "replace") for rdata in answer]


async def ptr(ip: str, *, timeout: float | None = None) -> list[str]:
    """The PTR names of an IPv4 or IPv6 address (in-addr.arpa / ip6.arpa), without the final
    dot. ValueError if ``ip`` is not an IP address."""
    name = dns.reversename.from_address(str(ipaddress.ip_address(ip)))
    answer = await _resolve(name, "PTR", timeout)
    return [] if answer is None else [_host(rdata.target) for rdata in answer]


async def tlsa(name: str, *, timeout: float | None = None) -> list[TlsaRecord]:
    """The TLSA records at ``name``, e.g. ``_25._tcp.mx.example.org`` (RFC 7672 §2.2)."""
    answer = await _resolve(name, "TLSA", timeout)
    if answer is None:
        return []
    return [TlsaRecord(r.usage, r.selector, r.mtype, bytes(r.cert)) for r in answer]


def authenticated(answer: dns.resolver.Answer) -> bool:
    """Whether the resolver set AD on ``answer``: it validated it with DNSSEC (RFC 4035
    §3.2.3). Only as trustworthy as the path to the resolver (RFC 7672 §2.1: use a local
    one)."""
    return bool(answer.response.flags & dns.flags.AD)


async def tlsa_authenticated(
    name: str, *, timeout: float | None = None
) -> tuple[list[TlsaRecord], bool, int]:
    """The TLSA records at ``name``, whether the resolver authenticated them (AD), and their
    TTL in seconds (0 when there are none). A bogus answer is SERVFAIL from a validating
    resolver, raised as DnsError like any temporary failure (RFC 7672 §2.1.1)."""
    answer = await _resolve(name, "TLSA", timeout)
    if answer is None or answer.rrset is None:
        return [], False, 0
    records = [TlsaRecord(r.usage, r.selector, r.mtype, bytes(r.cert)) for r in answer]
    return records, authenticated(answer), int(answer.rrset.ttl)


def dnsbl_name(ip: str, zone: str) -> str:
    """The name to look up for ``ip`` in a block list (RFC 5782 §2.1, §2.4): IPv4 octets
    reversed, IPv6 as 32 reversed nibbles, then the zone."""
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # a v4 client seen on a dual-stack socket
    if isinstance(address, ipaddress.IPv4Address):
        labels: Sequence[str] = str(address).split(".")[::-1]
    else:
        labels = address.exploded.replace(":", "")[::-1]
    return ".".join([*labels, zone.strip(".")])


async def dnsbl(ip: str, zone: str, *, timeout: float | None = None) -> DnsblResult:
    """Ask the block list ``zone`` about ``ip``: its A records are the listing codes (empty
    when not listed); the TXT record, when the list has one, is the reason.

    Only 127.0.0.0/8 answers count as listings (RFC 5782 §2.1): a list that has expired and
    whose domain now answers every name with some web server must not block all mail."""
    name = dnsbl_name(ip, zone)
    codes = await a(name, timeout=timeout)
    codes = sorted(c for c in codes if c.startswith("127."))
    if not codes:
        return DnsblResult()
    reasons = await txt(name, timeout=timeout)
    return DnsblResult(tuple(codes), " ".join(reasons) if reasons else None)


async def fcrdns(ip: str, *, timeout: float | None = None) -> list[str]:
    """Forward-confirmed reverse DNS: the PTR names of ``ip`` whose A (IPv4) or AAAA (IPv6)
    records include ``ip`` again. Empty: no PTR, or none confirms (RFC 8601 §3 "iprev").

    A name whose forward lookup fails temporarily raises DnsError rather than being dropped:
    "not confirmed" must not be said when it is not known."""
    address = ipaddress.ip_address(ip)
    lookup = a if isinstance(address, ipaddress.IPv4Address) else aaaa
    names = await ptr(ip, timeout=timeout)
    forwards = await asyncio.gather(*(lookup(name, timeout=timeout) for name in names))
    return [
        name
        for name, found in zip(names, forwards, strict=True)
        if any(ipaddress.ip_address(f) == address for f in found)
    ]
