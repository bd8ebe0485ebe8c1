"""DANE for outbound SMTP (RFC 7672): the TLS policy of an MX host from its TLSA records.

What applies, per MX target (:func:`dane_policy`):

- ``[delivery] dane = "off"``, or the target is not "secure" (its MX RRset or address RRset
  was not DNSSEC-authenticated, :class:`~mailwarden.delivery.mx.Target` ``dnssec``): no DANE
  (RFC 7672 §2.2.1); MTA-STS or the route's policy decides.
- The TLSA RRset of ``_PORT._tcp.HOST`` is looked up at the CNAME-expanded host name first
  and then at the MX host name (§2.2.3). Trusted only when the resolver authenticated it
  (AD); an insecure TLSA RRset, or none, is no DANE.
- The lookup fails (SERVFAIL: a validating resolver's answer for bogus data, or a timeout)
  for a secure host: the host is not tried, the attempt defers (§2.1.1: a failed lookup is
  not "no records", delivery to that host waits); RFC 8460 type ``dnssec-invalid``.
- Usable records: DANE-TA(2) and DANE-EE(3), selector 0/1, matching type 0/1/2 (§3.1;
  PKIX-TA(0)/PKIX-EE(1) are unusable, §3.1.3). Some usable: TLS is mandatory and only those
  records authenticate the server (:mod:`mailwarden.delivery.dane_openssl`). None usable:
  TLS is still mandatory, without authentication (§2.2: usable or not, published TLSA
  records say the server does TLS), never plaintext.

The answers are cached for their TTL (at most :data:`MAX_CACHE_SECONDS`), so the queue's
connections to one MX host cost one lookup per TTL; a failed lookup is remembered for
:data:`FAILURE_SECONDS`, so a host with many addresses (or a resolver that times out) costs
one wait per attempt, not one per address.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass

from mailwarden.delivery.mx import Target
from mailwarden.delivery.tls import TlsMode, TlsPolicy
from mailwarden.lib import dns as lib_dns

__all__ = ["DaneMode", "configure", "dane_policy", "mode", "usable"]

MAX_CACHE_SECONDS = 3600
FAILURE_SECONDS = 30.0
_CACHE_LIMIT = 10_000

USAGES = frozenset({2, 3})  # DANE-TA, DANE-EE (RFC 7672 §3.1)
SELECTORS = frozenset({0, 1})  # full certificate, SubjectPublicKeyInfo (RFC 6698 §2.1.2)
MATCHING_TYPES = frozenset({0, 1, 2})  # exact, SHA-256, SHA-512 (RFC 6698 §2.1.3)
_DIGEST_SIZES = {1: 32, 2: 64}


class DaneMode(enum.StrEnum):
    OPPORTUNISTIC = "opportunistic"  # RFC 7672: DANE wherever the MX host publishes it
    OFF = "off"


_mode = DaneMode.OPPORTUNISTIC


def configure(value: str | DaneMode) -> None:
    """Set ``[delivery] dane`` for this process (each worker, at start and on reload);
    ValueError for an unknown value."""
    global _mode
    _mode = DaneMode(value)


def mode() -> DaneMode:
    return _mode


def usable(record: lib_dns.TlsaRecord) -> bool:
    """Whether RFC 7672 §3.1 lets a record authenticate a server; a digest of the wrong size
    can never match (RFC 6698 §2.1.3 fixes their sizes) and is unusable too."""
    if record.usage not in USAGES or record.selector not in SELECTORS:
        return False
    if record.mtype not in MATCHING_TYPES:
        return False
    size = _DIGEST_SIZES.get(record.mtype)
    return size is None or len(record.data) == size


def presentation(record: lib_dns.TlsaRecord) -> str:
    """A record as zone files and RFC 8460 policy-strings write it: ``3 1 1 <hex>``."""
    return f"{record.usage} {record.selector} {record.mtype} {record.hex}"


@dataclass(frozen=True, slots=True)
class _Found:
    base: str  # the TLSA base domain the records were found at
    records: tuple[lib_dns.TlsaRecord, ...]  # empty: no (secure) TLSA RRset


_cache: dict[tuple[str, int], tuple[float, _Found | lib_dns.DnsError]] = {}


async def _lookup(name: str, port: int) -> _Found:
    key = (name, port)
    now = time.monotonic()
    cached = _cache.get(key)
    if cached is not None and cached[0] > now:
        failed = cached[1]
        if isinstance(failed, lib_dns.DnsError):
            raise lib_dns.DnsError(failed.name, failed.rdtype, failed.reason)
        return cached[1]
    if len(_cache) >= _CACHE_LIMIT:
        _cache.clear()
    try:
        records, secure, ttl = await lib_dns.tlsa_authenticated(f"_{port}._tcp.{name}")
    except lib_dns.DnsError as error:
        _cache[key] = (now + FAILURE_SECONDS, error)
        raise
    found = _Found(name, tuple(records) if secure else ())
    _cache[key] = (now + min(max(ttl, 0), MAX_CACHE_SECONDS), found)
    return found


def clear_cache() -> None:
    _cache.clear()


async def dane_policy(domain: str, target: Target, base: TlsPolicy) -> TlsPolicy | None:
    """The DANE policy of ``target`` (an MX host of ``domain``), or None when DANE does not
    apply; see the module docstring. Never raises for DNS trouble: a failed lookup is a
    policy whose ``dane_failure`` stops the attempt at that host."""
    if _mode is DaneMode.OFF or not target.dnssec:
        return None
    host = target.host.lower().rstrip(".")
    bases = [target.expanded, host] if target.expanded and target.expanded != host else [host]
    found = _Found(host, ())
    try:
        for name in bases:
            found = await _lookup(name, target.port)
            if found.records:
                break
    except lib_dns.DnsError:
        return TlsPolicy(
            mode=TlsMode.REQUIRED,
            source="dane",
            policy_type="tlsa",
            policy_domain=domain,
            dane_failure="dnssec-invalid",
            dane_names=(host,),
        )
    if not found.records:
        return None
    records = tuple(r for r in found.records if usable(r))
    names = tuple(dict.fromkeys([found.base, host]))  # §3.2.2: base domain, then the MX name
    return TlsPolicy(
        mode=TlsMode.REQUIRED,
        source="dane",
        policy_type="tlsa",
        policy_domain=domain,
        policy_strings=tuple(presentation(r) for r in found.records),
        tlsa=tuple((r.usage, r.selector, r.mtype, r.data) for r in records),
        dane_names=names,
    )
