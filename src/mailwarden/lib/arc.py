"""ARC (RFC 8617) for policy scripts: ``await arc.seal(message, …)``, ``await arc.verify(…)``.

The cryptography and canonicalisation are dkimpy's ARC support. Sealing adds an ARC set
(ARC-Seal, ARC-Message-Signature, ARC-Authentication-Results) at the top of
``message.headers``; like DKIM signing it reads the body, so it is a coroutine, and it must
follow every other edit of the data hook.

Verifying looks up the keys of every ARC-Seal and ARC-Message-Signature (``s._domainkey.d``
TXT, RFC 8617 §4.1.2 refers to RFC 6376 §3.6.2) through :mod:`mailwarden.lib.dns`
asynchronously, then hands them to dkimpy, whose blocking validation runs in a thread.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import dkim as dkimpy
import dns.exception
import dns.name
from dkim.util import InvalidTagValueList, parse_tag_value

from mailwarden.lib import authres as lib_authres
from mailwarden.lib import dkim as lib_dkim
from mailwarden.lib import dns as lib_dns
from mailwarden.policy.context import Message

__all__ = ["DEFAULT_HEADERS", "ArcResult", "ArcSet", "seal", "verify"]

Result = Literal["none", "pass", "fail"]

# The AMS covers what a DKIM signature would, and the DKIM-Signature fields themselves
# (RFC 8617 §4.1.2 lets it sign any field but the ARC-Seal); never Authentication-Results,
# which receivers rewrite (RFC 8601 §5).
DEFAULT_HEADERS: tuple[str, ...] = (*lib_dkim.DEFAULT_HEADERS, "DKIM-Signature")

# RFC 8617 §4.2.1: i= runs from 1 to 50.
MAX_INSTANCE = 50


@dataclass(frozen=True, slots=True)
class ArcSet:
    """What the validation found for one ARC set (RFC 8617 §4.1): its instance, the cv= its
    seal claims, the signing domains and selectors and whether each signature verified."""

    instance: int
    cv: str
    seal_domain: str
    seal_selector: str
    seal_valid: bool
    signature_domain: str
    signature_selector: str
    signature_valid: bool


@dataclass(frozen=True, slots=True)
class ArcResult:
    """The chain validation status (RFC 8617 §4.4): ``none`` (no ARC set), ``pass`` or
    ``fail``; ``instances`` is the highest i= (the number of sets of a sound chain), ``reason``
    says why it failed. ``temporary``: a key lookup failed temporarily (timeout, SERVFAIL),
    so the fail may be a pass later; a script may defer instead."""

    result: Result
    instances: int = 0
    reason: str = ""
    sets: tuple[ArcSet, ...] = ()
    temporary: bool = False

    def __bool__(self) -> bool:
        return self.result == "pass"


# -- sealing --------------------------------------------------------------------------------


def _arc_result_of(value: str) -> str | None:
    """The arc= result the Authentication-Results value reports, or None; ValueError if the
    value does not parse (dkimpy would drop it silently and seal nothing)."""
    parsed = lib_authres.parse(value)
    results = [r.result for r in parsed.results if r.method == "arc"]
    if len(results) > 1:
        raise ValueError("the Authentication-Results value reports arc= more than once")
    return results[0] if results else None


def _existing_instances(raw: bytes) -> int:
    try:
        highest, _ = dkimpy.ARC(raw).sorted_arc_headers()
    except dkimpy.DKIMException:
        return 0
    return int(highest)


def _seal(
    raw: bytes, key: bytes, domain: str, selector: str, srv_id: str, include: list[bytes]
) -> list[bytes]:
    sealer = dkimpy.ARC(raw, signature_algorithm=b"rsa-sha256", linesep=b"\r\n")
    # dkimpy keeps a DKIM signer from signing DKIM-Signature; an AMS may (RFC 8617 §4.1.2
    # excludes only ARC-Seal), and should: a later hop's change to it is then detected.
    sealer.should_not_sign.discard(b"dkim-signature")
    try:
        return list(
            sealer.sign(
                selector.encode("ascii"),
                domain.encode("ascii"),
                key,
                srv_id.encode("ascii"),
                include_headers=include,
            )
        )
    except dkimpy.DKIMException as error:
        raise ValueError(f"ARC sealing failed: {error}") from None


async def seal(
    message: Message,
    *,
    domain: str,
    selector: str,
    key: bytes | str | os.PathLike[str],
    authres: str,
    headers: Iterable[str] = DEFAULT_HEADERS,
) -> list[str]:
    """Add the next ARC set to ``message``: ARC-Authentication-Results (a copy of ``authres``
    with i=), ARC-Message-Signature and ARC-Seal, at the top of its headers, for ``domain``
    with the RSA key of ``selector``. Returns the three fields added, ARC-Seal first.

    ``authres``: the Authentication-Results value this host computed (``authres.build`` /
    ``authres.add`` return it), starting with our authserv-id. When the message already
    carries ARC sets it must report the chain's validation as ``arc=pass`` or ``arc=fail``
    (``authres.build(…, arc=await arc.verify(message))``): that is the new seal's cv=
    (RFC 8617 §5.1.1). ``key``: PEM, or a path to a PEM file; ARC signs rsa-sha256 only
    (RFC 8617 §4.1.3 names no other algorithm). ``headers``: the fields the AMS signs when
    present (From always).

    Raises ValueError for a bad key, an Ed25519 key, an ``authres`` that does not parse or
    lacks the chain's arc= result, or a chain already at i=50; OSError for an unreadable
    key file."""
    loaded = lib_dkim._load_key(lib_dkim._key_bytes(key))
    if loaded.algorithm != "rsa-sha256":
        raise ValueError("ARC seals with RSA keys only (rsa-sha256, RFC 8617 §4.1.3)")
    srv_id = lib_authres.authserv_id(authres)
    if srv_id is None:
        raise ValueError("authres has no authserv-id; pass what authres.build returned")
    cv = _arc_result_of(authres)
    header_names = [name for name, _ in message.headers]
    if not any(name.lower() == "from" for name in header_names):
        raise ValueError("the message has no From field; the AMS must sign it (RFC 8617 §4.1.2)")
    headers = list(headers)
    if not any(name.lower() == "from" for name in headers):
        headers.insert(0, "From")
    include = lib_dkim._header_list(header_names, headers, ())
    body = await message.body()
    instances = _existing_instances(message.headers.to_bytes() + b"\r\n")
    _check_chain(instances, cv)
    # dkimpy copies into the AAR every Authentication-Results field of srv_id it finds: give
    # it ours alone, so that the AAR says exactly what this host found.
    view = message.headers.copy()
    lib_authres.delete_claiming(view, srv_id)
    view.add_folded(f"{lib_authres.FIELD}: {authres}\r\n".encode("ascii", "replace"))
    raw = view.to_bytes() + b"\r\n" + body
    fields = await asyncio.to_thread(
        _seal, raw, loaded.dkimpy_key, domain, selector, srv_id, include
    )
    if len(fields) != 3:
        raise ValueError("ARC sealing produced no set: is authres our Authentication-Results?")
    # Added byte for byte as dkimpy folded them, AAR first so that ARC-Seal ends on top.
    for field in reversed(fields):
        message.headers.add_folded(field if field.endswith(b"\r\n") else field + b"\r\n")
    message.mark_signed("ARC-Message-Signature")  # a body edit from now on would break it
    return [field.decode("ascii").rstrip("\r\n") for field in fields]


def _check_chain(instances: int, cv: str | None) -> None:
    if instances >= MAX_INSTANCE:
        raise ValueError(f"the ARC chain already has {instances} sets (RFC 8617 §4.2.1: 50)")
    if instances and cv not in ("pass", "fail"):
        raise ValueError(
            f"the message has {instances} ARC set(s): authres must report their validation "
            "(arc=pass or arc=fail, from arc.verify) as the new seal's cv= (RFC 8617 §5.1.1)"
        )
    if not instances and cv not in (None, "none"):
        raise ValueError(f"authres says arc={cv} but the message has no ARC set")


# -- verification ---------------------------------------------------------------------------


def _key_names(raw: bytes) -> set[str]:
    """``selector._domainkey.domain`` of every ARC-Seal and ARC-Message-Signature."""
    names: set[str] = set()
    try:
        _, sets = dkimpy.ARC(raw).sorted_arc_headers()
    except dkimpy.DKIMException:
        return names
    for _instance, (name, value) in sets:
        if name.lower() not in (b"arc-seal", b"arc-message-signature"):
            continue
        try:
            tags = dict(parse_tag_value(value))
        except InvalidTagValueList:
            continue
        domain = tags.get(b"d", b"").decode("ascii", "replace").strip()
        selector = tags.get(b"s", b"").decode("ascii", "replace").strip()
        if domain and selector:
            names.add(f"{selector}._domainkey.{domain}".lower())
    return names


async def _fetch(name: str) -> tuple[bytes | None, str]:
    """The key record at ``name`` (None when not published) and a temporary failure's text."""
    try:
        dns.name.from_text(name)
    except (dns.exception.DNSException, UnicodeError):
        return None, ""  # no such name can exist (a label over 63 octets…): not published
    try:
        records = await lib_dns.txt(name)
    except lib_dns.DnsError as error:
        return None, f"key lookup {name}: {error.reason}"
    chosen = next((r for r in records if re.search(r"(^|;)\s*p\s*=", r)), None)
    return (chosen.encode("utf-8") if chosen is not None else None), ""


def _text(value: object) -> str:
    return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value or "")


def _validate(raw: bytes, records: dict[str, bytes | None]) -> tuple[object, list[dict], str]:
    def lookup(name: bytes, timeout: float = 5) -> bytes | None:
        return records.get(name.decode("ascii", "replace").rstrip(".").lower())

    try:
        return dkimpy.ARC(raw).verify(dnsfunc=lookup)
    except dkimpy.DKIMException as error:
        return dkimpy.CV_Fail, [], str(error)
    except (IndexError, KeyError, ValueError, TypeError) as error:
        # dkimpy trips on some malformed sets (an AMS whose i= it cannot find again): such a
        # set cannot be validated, so the chain fails (RFC 8617 §5.2).
        return dkimpy.CV_Fail, [], f"malformed ARC set ({type(error).__name__}: {error})"


def _sets(details: list[dict]) -> tuple[ArcSet, ...]:
    found = [
        ArcSet(
            instance=int(d["instance"]),
            cv=_text(d.get("cv")),
            seal_domain=_text(d.get("as-domain")).lower(),
            seal_selector=_text(d.get("as-selector")),
            seal_valid=bool(d.get("as-valid")),
            signature_domain=_text(d.get("ams-domain")).lower(),
            signature_selector=_text(d.get("ams-selector")),
            signature_valid=bool(d.get("ams-valid")),
        )
        for d in details
    ]
    return tuple(sorted(found, key=lambda s: s.instance))


async def verify(message: Message | bytes) -> ArcResult:
    """Validate the ARC chain of ``message`` (the data hook's Message, or the raw bytes):
    RFC 8617 §5.2. ``none`` without ARC fields; ``pass`` when every set is complete and
    sealed, the newest AMS verifies and no seal says cv=fail; else ``fail`` with the reason.

    Never raises for the message's or DNS's sake: a key that is not published or does not
    verify is a ``fail``; one whose lookup failed temporarily too, with ``temporary=True``."""
    raw = message if isinstance(message, bytes) else await message.raw()
    try:
        parsed = dkimpy.ARC(raw)
        highest, _ = parsed.sorted_arc_headers()
    except dkimpy.DKIMException as error:
        if b"arc-" not in raw.lower():
            return ArcResult("none")
        return ArcResult("fail", reason=f"message not parseable: {error}")
    if not highest:
        if any(name.lower() in dkimpy.ARC.ARC_HEADERS for name, _ in parsed.headers):
            # ARC fields, none with a usable i=: a broken chain, not an absent one (§5.2).
            return ArcResult("fail", reason="ARC header fields without a valid i= instance")
        return ArcResult("none")
    if highest > MAX_INSTANCE:
        return ArcResult("fail", int(highest), f"i={highest} is over {MAX_INSTANCE} (§4.2.1)")
    names = sorted(_key_names(raw))
    fetched = await asyncio.gather(*(_fetch(name) for name in names))
    records = {name: record for name, (record, _) in zip(names, fetched, strict=True)}
    trouble = "; ".join(error for _, error in fetched if error)
    cv, details, reason = await asyncio.to_thread(_validate, raw, records)
    sets = _sets(details)
    if cv == dkimpy.CV_Pass:
        return ArcResult("pass", int(highest), "", sets)
    if cv is None:
        # dkimpy's "chain terminated": a seal says cv=fail, so the chain fails (§5.2 step 2).
        reason = reason or "an ARC-Seal reports cv=fail"
    # Only a signature that could not be checked for want of its key may pass later; a
    # chain broken in its structure or by a cv=fail seal fails whatever DNS says.
    temporary = bool(trouble) and "did not validate" in reason
    if trouble:
        reason = f"{reason} ({trouble})" if reason else trouble
    return ArcResult("fail", int(highest), reason, sets, temporary=temporary)
