"""SPF (RFC 7208) for policy scripts: ``await spf.check(ip, sender, helo)``.

The evaluation is pyspf's; it blocks on DNS, so it runs in a thread and the event loop keeps
serving other connections. Its lookups go to the same servers as :mod:`mailwarden.lib.dns`
(``[node] dns_servers``): pyspf's module-level ``DNSLookup`` driver is replaced by one that asks
a resolver built from that configuration (pyspf otherwise asks dnspython's default resolver,
i.e. /etc/resolv.conf).
"""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass
from typing import Any, Literal

import dns.exception
import dns.resolver
import spf as pyspf

from mailwarden.config.listen import is_hostname
from mailwarden.lib import dns as lib_dns

__all__ = ["LOOKUP_LIMIT_SECONDS", "SpfResult", "check"]

Result = Literal["pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"]

# RFC 7208 §4.6.4: "MAY impose a limit ... of at least 20 seconds" on the whole evaluation.
LOOKUP_LIMIT_SECONDS = 20.0


@dataclass(frozen=True, slots=True)
class SpfResult:
    """The RFC 7208 §2.6 result, the explanation (the domain's ``exp=`` text for a fail, when it
    publishes one), and which identity was checked: ``"mailfrom"``, or ``"helo"`` for the null
    reverse-path (§2.4) where ``postmaster@<helo>`` is checked instead."""

    result: Result
    explanation: str
    identity: Literal["mailfrom", "helo"]
    domain: str

    def __bool__(self) -> bool:
        return self.result == "pass"


def _lookup(name: str, qtype: str, strict: object = True, timeout: float = 20) -> list[Any]:
    """pyspf's DNS driver contract: ``[((name, qtype), value), ...]``, values as pyspf's own
    dnspython driver gives them; NXDOMAIN and no answer are ``[]``; a temporary failure is
    pyspf's TempError (which it turns into ``temperror``, RFC 7208 §2.6.6)."""
    resolver = lib_dns.make_sync_resolver()
    lifetime = min(float(timeout), lib_dns.timeout())
    try:
        answer = resolver.resolve(name, qtype, lifetime=lifetime, search=False)
    except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
        return []
    except (dns.exception.Timeout, dns.resolver.NoNameservers) as error:
        raise pyspf.TempError(f"DNS {error}") from None
    except dns.exception.DNSException as error:
        raise pyspf.TempError(f"DNS {error}") from None
    return [((name, qtype), _value(qtype, rdata)) for rdata in answer]


def _value(qtype: str, rdata: Any) -> Any:
    if qtype in ("A", "AAAA"):
        return rdata.address
    if qtype == "MX":
        return (rdata.preference, rdata.exchange)
    if qtype == "PTR":
        return rdata.target.to_text(True)
    return rdata.strings  # TXT (and the obsolete SPF type): the character-strings, as bytes


pyspf.DNSLookup = _lookup


def _evaluate(ip: str, sender: str, helo: str, limit: float) -> SpfResult:
    query = pyspf.query(
        i=ip, s=sender, h=helo, timeout=lib_dns.timeout(), querytime=limit, strict=True
    )
    result, _code, explanation = query.check()
    identity: Literal["mailfrom", "helo"] = "helo" if query.ident == "helo" else "mailfrom"
    return SpfResult(result, explanation, identity, query.d or "")


async def check(
    ip: str, sender: str, helo: str, *, limit: float = LOOKUP_LIMIT_SECONDS
) -> SpfResult:
    """Evaluate SPF for a client ``ip`` sending as ``sender`` (the MAIL FROM address, ``""``
    for the null reverse-path) after ``helo``. ``limit`` bounds the whole evaluation in
    seconds (every lookup is also bounded by ``[node] dns_timeout``). DNS trouble is not
    raised: it is the ``temperror`` result, which a script turns into a 4xx.

    Raises ValueError if ``ip`` is not an IP address."""
    ip = str(ipaddress.ip_address(ip))
    identity: Literal["mailfrom", "helo"] = "mailfrom" if sender else "helo"
    domain = sender.rpartition("@")[2] if sender else helo
    if not is_hostname(domain) or "." not in domain.strip("."):
        # RFC 7208 §4.3: a malformed or single-label domain (an address literal, a bare
        # host name) has no SPF record to look up: "none", without asking DNS.
        return SpfResult("none", "no SPF record for a malformed domain", identity, domain)
    return await asyncio.to_thread(_evaluate, ip, sender, helo, limit)
