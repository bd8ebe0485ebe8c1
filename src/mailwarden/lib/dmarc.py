"""DMARC (RFC 7489) for policy scripts: ``await dmarc.evaluate(message, spf=…, dkim=…)``.

The evaluation is ours, not a library's: it is small (RFC 7489 §6.6), and the packages that
exist either check a domain's published records rather than evaluate a message, or send their
own DNS queries past ``[node] dns_servers``. The policy record (``_dmarc.<domain>`` TXT) is
looked up asynchronously through :mod:`mailwarden.lib.dns`. The organizational domain (§3.2)
comes from the Public Suffix List bundled with the ``publicsuffixlist`` package, read from the
package's own file (no download at run time; a newer list comes with a package upgrade).
"""

from __future__ import annotations

import functools
import random as random_module
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from email.headerregistry import AddressHeader
from email.parser import HeaderParser
from email.policy import default as default_policy
from typing import Literal

from publicsuffixlist import PublicSuffixList

from mailwarden.config.listen import is_hostname
from mailwarden.lib import dns as lib_dns
from mailwarden.lib.dkim import DkimResult
from mailwarden.lib.spf import SpfResult
from mailwarden.policy.context import Message

__all__ = [
    "DmarcRecord",
    "DmarcRecordError",
    "DmarcResult",
    "aligned",
    "evaluate",
    "organizational_domain",
    "parse_record",
]

Policy = Literal["none", "quarantine", "reject"]
Result = Literal["pass", "fail", "none", "temperror", "permerror"]
Mode = Literal["r", "s"]

_POLICIES: tuple[Policy, ...] = ("none", "quarantine", "reject")
# RFC 7489 §6.6.4: a message not selected by pct= gets the next policy down.
_WEAKER: dict[Policy, Policy] = {"reject": "quarantine", "quarantine": "none", "none": "none"}
_TAG = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[^\s!,]+(?:![0-9]+[kmgtKMGT]?)?")
_FO = re.compile(r"[01ds](?::[01ds])*")


class DmarcRecordError(ValueError):
    """The TXT record is not a usable DMARC record; the message says why."""


@dataclass(frozen=True, slots=True)
class DmarcRecord:
    """A parsed DMARC policy record (RFC 7489 §6.3), defaults filled in. ``problems`` lists
    what was ignored: a bad optional tag's value falls back to its default (§6.3: syntax
    errors in the remainder of the record SHOULD be discarded in favour of defaults)."""

    policy: Policy
    subdomain_policy: Policy | None = None  # sp=; None: p= applies to subdomains too
    pct: int = 100
    adkim: Mode = "r"
    aspf: Mode = "r"
    rua: tuple[str, ...] = ()
    ruf: tuple[str, ...] = ()
    fo: str = "0"
    rf: str = "afrf"
    ri: int = 86400
    problems: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DmarcResult:
    """The DMARC evaluation of one message.

    ``result`` is RFC 7489 §11.2's (as Authentication-Results reports it); ``disposition`` is
    what the policy asks the receiver to do with it (after ``pct=``): act on that one.
    ``policy`` is the published policy that applied (p= or sp=), None without a record."""

    result: Result
    disposition: Policy
    from_domain: str
    policy: Policy | None = None
    policy_domain: str = ""  # where the record was found: the From domain or its org domain
    record: DmarcRecord | None = None
    spf_aligned: bool = False
    dkim_aligned: bool = False
    dkim_domain: str = ""  # the d= of the aligned DKIM pass, if any
    sampled_out: bool = False  # pct= left this message out: the policy was weakened (§6.6.4)
    reason: str = ""
    problems: tuple[str, ...] = field(default=())

    def __bool__(self) -> bool:
        return self.result == "pass"


# -- the record -----------------------------------------------------------------------------


def _split_tags(text: str) -> list[tuple[str, str]]:
    """RFC 7489 §6.4 / RFC 6376 §3.2 tag-list: ``tag=value`` pairs joined by ``;``."""
    tags: list[tuple[str, str]] = []
    seen: set[str] = set()
    for index, part in enumerate(text.split(";")):
        part = part.strip(" \t\r\n")
        if not part:
            continue  # an empty element, e.g. after the final ";" (allowed)
        name, equals, value = part.partition("=")
        name = name.strip(" \t")
        if not equals or not _TAG.fullmatch(name):
            raise DmarcRecordError(f"element {index + 1} ({part[:40]!r}) is not tag=value")
        key = name.lower()
        if key in seen:
            raise DmarcRecordError(f"tag {name!r} appears twice")
        seen.add(key)
        tags.append((key, value.strip(" \t")))
    return tags


def _uris(name: str, value: str, problems: list[str]) -> tuple[str, ...]:
    good: list[str] = []
    for item in (v.strip(" \t") for v in value.split(",")):
        if _URI.fullmatch(item):
            good.append(item)
        elif item:
            problems.append(f"{name}: {item[:60]!r} is not a URI, ignored")
    return tuple(good)


def _policy_value(text: str) -> Policy | None:
    lowered = text.lower()
    return next((p for p in _POLICIES if p == lowered), None)


def parse_record(text: str) -> DmarcRecord:
    """Parse a DMARC TXT record, e.g. ``"v=DMARC1; p=reject; rua=mailto:d@example.org"``.

    Raises DmarcRecordError when the text is no DMARC record (``v=DMARC1`` not first), is not a
    tag list, repeats a tag, or has no valid ``p=`` and no valid ``rua=`` (§6.6.3 step 6:
    with a valid rua a bad or missing p= reads as ``p=none``). Never raises anything else."""
    tags = _split_tags(text)
    if not tags or tags[0] != ("v", "DMARC1"):
        raise DmarcRecordError("a DMARC record starts with v=DMARC1 (RFC 7489 §6.4)")
    values = dict(tags[1:])
    problems: list[str] = []
    rua = _uris("rua", values["rua"], problems) if "rua" in values else ()
    policy = _policy_value(values.get("p", ""))
    if policy is None:
        if not rua:
            shown = f"p={values['p'][:40]!r}" if "p" in values else "no p= tag"
            raise DmarcRecordError(f"{shown}: p= must be none, quarantine or reject")
        problems.append("p= missing or invalid; read as p=none because rua= is valid")
        policy = "none"
    record = DmarcRecord(policy=policy, rua=rua, problems=())
    return _optional_tags(record, values, problems)


def _optional_tags(record: DmarcRecord, values: dict[str, str], problems: list[str]) -> DmarcRecord:
    changes: dict[str, object] = {}
    if "sp" in values:
        sp = _policy_value(values["sp"])
        if sp is None:
            problems.append(f"sp={values['sp'][:40]!r} is not a policy, ignored")
        changes["subdomain_policy"] = sp
    if "pct" in values:
        text = values["pct"]
        if text.isascii() and text.isdigit() and int(text) <= 100:
            changes["pct"] = int(text)
        else:
            problems.append(f"pct={text[:40]!r} is not 0 to 100, read as 100")
    for tag in ("adkim", "aspf"):
        if tag in values:
            mode = values[tag].lower()
            if mode in ("r", "s"):
                changes[tag] = mode
            else:
                problems.append(f"{tag}={values[tag][:40]!r} is not r or s, read as r")
    if "ruf" in values:
        changes["ruf"] = _uris("ruf", values["ruf"], problems)
    if "fo" in values:
        if _FO.fullmatch(values["fo"].replace(" ", "")):
            changes["fo"] = values["fo"].replace(" ", "")
        else:
            problems.append(f"fo={values['fo'][:40]!r} is not 0, 1, d or s, read as 0")
    if "rf" in values:
        changes["rf"] = values["rf"].lower()
    if "ri" in values:
        text = values["ri"]
        if text.isascii() and text.isdigit() and len(text) <= 10:
            changes["ri"] = int(text)
        else:
            problems.append(f"ri={text[:40]!r} is not a number of seconds, read as 86400")
    return _replace(record, changes, problems)


def _replace(record: DmarcRecord, changes: dict[str, object], problems: list[str]) -> DmarcRecord:
    return replace(record, **changes, problems=tuple(problems))  # type: ignore[arg-type]


# -- domains --------------------------------------------------------------------------------


@functools.cache
def _psl() -> PublicSuffixList:
    return PublicSuffixList()  # the package's bundled list; loaded once per process


def organizational_domain(domain: str) -> str:
    """RFC 7489 §3.2: the public suffix of ``domain`` plus one label, e.g.
    ``mail.example.co.uk`` -> ``example.co.uk``; a name that is itself a public suffix is its
    own organizational domain."""
    domain = domain.lower().rstrip(".")
    return _psl().privatesuffix(domain) or domain


def aligned(domain: str, from_domain: str, mode: Mode = "r") -> bool:
    """Identifier alignment (RFC 7489 §3.1): strict is the same name, relaxed the same
    organizational domain."""
    a, b = domain.lower().rstrip("."), from_domain.lower().rstrip(".")
    if not a or not b:
        return False
    if mode == "s":
        return a == b
    return a == b or organizational_domain(a) == organizational_domain(b)


def _header_block(raw: bytes) -> bytes:
    end = re.search(rb"\r?\n\r?\n", raw)
    return raw if end is None else raw[: end.end()]


# What the standard library's parser takes for a field's first line (email.feedparser's
# headerRE): a field name, possibly empty, then ":".
_FIELD_START = re.compile(rb"[\x21-\x39\x3b-\x7e]*:")


def _from_fields(header_block: bytes) -> bytes:
    """Only the From fields (with their continuation lines) of the header section, where the
    standard library's parser would find them: it stops at the first line that is neither a
    field nor a continuation, and skips "From " envelope lines. Parsing just these is what
    costs: the full parse also decodes Content-Type and every other structured field."""
    kept: list[bytes] = []
    taking = False
    for line in header_block.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t"):
            if taking:
                kept.append(line)
            continue
        if line.startswith(b"From "):
            taking = False
            continue
        if not line.strip() or _FIELD_START.match(line) is None:
            break
        taking = line[:5].lower() == b"from:"
        if taking:
            kept.append(line)
    return b"".join(kept)


def _from_domain(header_block: bytes) -> tuple[str | None, str]:
    """The RFC5322.From domain (RFC 7489 §6.6.1), or None and why there is none to use."""
    # UTF-8 header fields (RFC 6532) are read as such, so an internationalised domain is one.
    text = _from_fields(header_block).decode("utf-8", "replace")
    try:
        parsed = HeaderParser(policy=default_policy).parsestr(text)
        fields = parsed.get_all("From") or []
        if len(fields) != 1:
            return None, f"the message has {len(fields)} From fields; DMARC needs exactly one"
        header = fields[0]
        addresses = header.addresses if isinstance(header, AddressHeader) else ()
    except Exception as error:  # the standard library's parser can trip on odd input
        return None, f"the From field cannot be parsed ({type(error).__name__})"
    if len(addresses) != 1:
        return None, f"the From field has {len(addresses)} addresses; DMARC needs exactly one"
    domain = addresses[0].domain.lower().rstrip(".")
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            return None, f"the From domain {domain!r} is not a valid domain name"
    if not is_hostname(domain) or "." not in domain:
        return None, f"the From domain {domain!r} is not a domain name DMARC can look up"
    return domain, ""


# -- policy discovery -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Found:
    domain: str
    record: DmarcRecord | None
    error: str = ""  # a record was there but unusable


async def _lookup(domain: str) -> _Found | None:
    """The DMARC record at ``_dmarc.<domain>`` (§6.6.3 steps 1-3); None when there is none.
    DnsError propagates (temporary)."""
    texts = await lib_dns.txt(f"_dmarc.{domain}")
    # Step 3: records not starting with v=DMARC1 are discarded (a lone "v=spf1" is not ours).
    candidates = [t for t in texts if re.match(r"[vV]\s*=\s*DMARC1\s*(;|$)", t)]
    if not candidates:
        return None
    if len(candidates) > 1:
        return _Found(domain, None, f"{len(candidates)} DMARC records at _dmarc.{domain}")
    try:
        return _Found(domain, parse_record(candidates[0]))
    except DmarcRecordError as error:
        return _Found(domain, None, f"_dmarc.{domain}: {error}")


async def _discover(from_domain: str) -> _Found | None:
    found = await _lookup(from_domain)
    if found is not None:
        return found
    # Step 4: nothing at the From domain: ask its organizational domain.
    org = organizational_domain(from_domain)
    if org == from_domain:
        return None
    return await _lookup(org)


# -- evaluation -----------------------------------------------------------------------------


def _spf_aligned(spf: SpfResult | None, from_domain: str, mode: Mode) -> bool:
    # RFC 7489 §3.1.2: an SPF pass for the RFC5321.MailFrom domain (or, for the null
    # reverse-path, the HELO identity SPF checked instead, RFC 7208 §2.4).
    return spf is not None and spf.result == "pass" and aligned(spf.domain, from_domain, mode)


def _dkim_aligned(dkim: Sequence[DkimResult] | None, from_domain: str, mode: Mode) -> str:
    # RFC 7489 §3.1.1: any passing signature whose d= aligns is enough.
    for result in dkim or ():
        if result.result == "pass" and aligned(result.domain, from_domain, mode):
            return result.domain
    return ""


def _applied_policy(found: _Found, record: DmarcRecord, from_domain: str) -> Policy:
    # §6.3 sp=: the policy for subdomains of the organizational domain the record was found
    # at; a record published at the From domain itself always gives p=.
    if found.domain != from_domain and record.subdomain_policy is not None:
        return record.subdomain_policy
    return record.policy


async def evaluate(
    message: Message | bytes,
    *,
    spf: SpfResult | None = None,
    dkim: Sequence[DkimResult] | None = None,
    rng: random_module.Random | None = None,
) -> DmarcResult:
    """Evaluate DMARC for ``message`` (the data hook's Message, or raw bytes) given its SPF
    result (``await spf.check(…)``) and DKIM results (``await dkim.verify(…)``); None for a
    check not made, which then cannot align.

    Never raises for the message's or DNS's sake: no single From domain is ``permerror``; no
    record ``none``; a DNS failure ``temperror`` (defer); an unusable record ``permerror``.
    ``rng`` draws the pct= sample (default: the process's random generator)."""
    raw = message.headers.to_bytes() if isinstance(message, Message) else _header_block(message)
    from_domain, why = _from_domain(raw)
    if from_domain is None:
        return DmarcResult("permerror", "none", "", reason=why)
    try:
        found = await _discover(from_domain)
    except lib_dns.DnsError as error:
        return DmarcResult("temperror", "none", from_domain, reason=f"policy lookup: {error}")
    if found is None:
        return DmarcResult("none", "none", from_domain, reason="no DMARC record published")
    if found.record is None:
        return DmarcResult(
            "permerror", "none", from_domain, policy_domain=found.domain, reason=found.error
        )
    return _decide(found, found.record, from_domain, spf, dkim, rng)


def _decide(
    found: _Found,
    record: DmarcRecord,
    from_domain: str,
    spf: SpfResult | None,
    dkim: Sequence[DkimResult] | None,
    rng: random_module.Random | None,
) -> DmarcResult:
    spf_ok = _spf_aligned(spf, from_domain, record.aspf)
    dkim_domain = _dkim_aligned(dkim, from_domain, record.adkim)
    policy = _applied_policy(found, record, from_domain)
    common = {
        "from_domain": from_domain,
        "policy": policy,
        "policy_domain": found.domain,
        "record": record,
        "spf_aligned": spf_ok,
        "dkim_aligned": bool(dkim_domain),
        "dkim_domain": dkim_domain,
        "problems": record.problems,
    }
    if spf_ok or dkim_domain:
        via = " and ".join(n for n, ok in (("SPF", spf_ok), ("DKIM", bool(dkim_domain))) if ok)
        return DmarcResult("pass", "none", reason=f"aligned {via} pass", **common)  # type: ignore[arg-type]
    # §6.6.4: pct= of the failing messages get the policy; the others the next one down.
    draw = (rng or random_module).random() * 100
    sampled_out = record.pct < 100 and draw >= record.pct
    disposition = _WEAKER[policy] if sampled_out else policy
    reason = "no aligned SPF or DKIM pass"
    if sampled_out:
        reason += f"; pct={record.pct} left this message out, {policy} weakened to {disposition}"
    return DmarcResult("fail", disposition, reason=reason, sampled_out=sampled_out, **common)  # type: ignore[arg-type]
