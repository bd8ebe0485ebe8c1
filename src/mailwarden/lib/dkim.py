"""DKIM (RFC 6376) for policy scripts: ``await dkim.sign(message, …)``, ``await dkim.verify(…)``.

The cryptography and canonicalisation are dkimpy's. Signing adds the DKIM-Signature field to
``message.headers`` (so it is spooled and delivered with the message); it reads the body, so it
is a coroutine, and it must be the data hook's last edit: any later change to a signed header
or to the body breaks the signature.

Verifying looks up each signature's key (``selector._domainkey.domain`` TXT, RFC 6376 §3.6.2)
through :mod:`mailwarden.lib.dns`, i.e. the node's ``[node] dns_servers``, asynchronously, and
hands the record to dkimpy, whose blocking verification then runs in a thread.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import dkim as dkimpy
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from dkim.util import InvalidTagValueList, parse_tag_value

from mailwarden.lib import dkim_crypto
from mailwarden.lib import dns as lib_dns
from mailwarden.policy.context import Message

dkim_crypto.install()  # dkimpy's RSA without its octet-by-octet conversions

__all__ = [
    "DEFAULT_HEADERS",
    "DEFAULT_OVERSIGN",
    "DkimResult",
    "sign",
    "verify",
]

Result = Literal["pass", "fail", "temperror", "permerror", "neutral"]
Algorithm = Literal["rsa-sha256", "ed25519-sha256"]

# RFC 6376 §5.4.1 lists the fields that SHOULD be signed; those present are signed.
DEFAULT_HEADERS: tuple[str, ...] = (
    "From",
    "Sender",
    "Reply-To",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
)
# Signed once more than they occur (RFC 6376 §5.4.2, §8.15): a field of these names added
# later, anywhere, breaks the signature.
DEFAULT_OVERSIGN: tuple[str, ...] = ("From", "Reply-To", "To", "Cc", "Subject", "Date")

_CANONICALISATIONS = ("relaxed", "simple")


@dataclass(frozen=True, slots=True)
class DkimResult:
    """The verification of one DKIM-Signature field: RFC 8601 §2.7.1's result for it and why."""

    result: Result
    domain: str
    selector: str
    algorithm: str
    reason: str = ""

    def __bool__(self) -> bool:
        return self.result == "pass"


# -- keys -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Key:
    algorithm: Algorithm
    dkimpy_key: bytes  # what dkimpy's sign takes: RSA as PKCS#1 PEM, Ed25519 as base64 seed


def _key_bytes(key: bytes | str | os.PathLike[str]) -> bytes:
    if isinstance(key, bytes):
        return key
    if isinstance(key, str) and "-----BEGIN" in key:
        return key.encode("ascii")
    return Path(key).read_bytes()  # a file path; OSError names it if unreadable


@functools.lru_cache(maxsize=64)
def _load_key(pem: bytes) -> _Key:
    try:
        private = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as error:
        raise ValueError(f"not an unencrypted PEM private key: {error}") from None
    if isinstance(private, rsa.RSAPrivateKey):
        if private.key_size < 1024:
            # RFC 8301 §3.2: verifiers MUST NOT consider keys under 1024 bits valid.
            raise ValueError(f"RSA key of {private.key_size} bits; DKIM needs at least 1024")
        encoded = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        return _Key("rsa-sha256", encoded)
    if isinstance(private, ed25519.Ed25519PrivateKey):
        seed = private.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        return _Key("ed25519-sha256", base64.b64encode(seed))
    raise ValueError("DKIM keys are RSA (rsa-sha256) or Ed25519 (ed25519-sha256, RFC 8463)")


# -- signing --------------------------------------------------------------------------------


class _Signer(dkimpy.DKIM):
    """dkimpy's signer with an x= tag (it writes none): inserted after t= before hashing."""

    expires: int | None = None

    def gen_header(self, fields: Any, *args: Any, **kwargs: Any) -> Any:
        if self.expires is not None:
            fields = [*fields]
            at = next((i + 1 for i, (tag, _) in enumerate(fields) if tag == b"t"), len(fields))
            fields.insert(at, (b"x", str(self.expires).encode("ascii")))
        return super().gen_header(fields, *args, **kwargs)


def _header_list(
    present: Sequence[str], headers: Iterable[str], oversign: Iterable[str]
) -> list[bytes]:
    """h=: each wanted field once per occurrence, then oversigned names once more."""
    counts: dict[str, int] = {}
    for name in present:
        counts[name.lower()] = counts.get(name.lower(), 0) + 1
    wanted = list(dict.fromkeys(name.lower() for name in headers))
    extra = list(dict.fromkeys(name.lower() for name in oversign))
    result = [name for name in wanted for _ in range(counts.get(name, 0))]
    result += extra
    return [name.encode("ascii") for name in result]


def _canonicalisation(text: str) -> tuple[bytes, bytes]:
    header, _, body = text.partition("/")
    body = body or "simple"  # RFC 6376 §3.5 c=: a missing body part means simple
    if header not in _CANONICALISATIONS or body not in _CANONICALISATIONS:
        raise ValueError(f"canonicalization {text!r}: use relaxed or simple, e.g. relaxed/relaxed")
    return header.encode(), body.encode()


def _sign(
    raw: bytes,
    key: _Key,
    domain: str,
    selector: str,
    include: list[bytes],
    canon: tuple[bytes, bytes],
    expires: int | None,
    identity: str | None,
) -> bytes:
    signer = _Signer(raw, signature_algorithm=key.algorithm.encode(), linesep=b"\r\n")
    signer.expires = expires
    return bytes(
        signer.sign(
            selector.encode("ascii"),
            domain.encode("ascii"),
            key.dkimpy_key,
            identity=identity.encode() if identity else None,
            canonicalize=canon,
            include_headers=include,
        )
    )


async def sign(
    message: Message,
    *,
    domain: str,
    selector: str,
    key: bytes | str | os.PathLike[str],
    headers: Iterable[str] = DEFAULT_HEADERS,
    oversign: Iterable[str] = DEFAULT_OVERSIGN,
    canonicalization: str = "relaxed/relaxed",
    expiration: float | None = None,
    identity: str | None = None,
) -> str:
    """Sign ``message`` for ``domain`` with the key of ``selector`` and add the DKIM-Signature
    field at the top of its headers. Returns the field as added (folded, without final CRLF).

    ``key``: PEM (bytes or str), or a path to a PEM file; RSA gives rsa-sha256, Ed25519
    ed25519-sha256 (RFC 8463). ``headers``: the fields signed when present (From always);
    ``oversign``: fields signed once more than present, so none can be added. ``expiration``:
    seconds from now for x= (RFC 6376 §3.5). ``identity``: i=, an address at ``domain``.

    Raises ValueError for a bad key or option, OSError for an unreadable key file."""
    loaded = _load_key(_key_bytes(key))
    canon = _canonicalisation(canonicalization)
    header_names = [name for name, _ in message.headers]
    headers, oversign = list(headers), list(oversign)
    if not any(n.lower() == "from" for n in header_names):
        raise ValueError("the message has no From field; DKIM must sign it (RFC 6376 §5.4)")
    if not any(n.lower() == "from" for n in headers):
        headers.insert(0, "From")
    if expiration is not None and not expiration > 0:
        raise ValueError(f"expiration must be a positive number of seconds, got {expiration!r}")
    expires = None if expiration is None else int(time.time() + expiration)
    include = _header_list(header_names, headers, oversign)
    raw = await message.raw()
    field = await asyncio.to_thread(
        _sign, raw, loaded, domain, selector, include, canon, expires, identity
    )
    if not field.endswith(b"\r\n"):
        field += b"\r\n"
    # The field is added as dkimpy folded it, byte for byte: with simple header
    # canonicalisation (RFC 6376 §3.4.1) refolding it would break it.
    message.headers.add_folded(field)
    message.mark_signed("DKIM-Signature")  # a body edit from now on would break it
    return field.decode("ascii").rstrip("\r\n")


# -- verification ---------------------------------------------------------------------------


class _KeyLookupError(Exception):
    def __init__(self, result: Result, reason: str) -> None:
        super().__init__(reason)
        self.result = result
        self.reason = reason


async def _fetch_key(selector: str, domain: str) -> bytes:
    """The key record (RFC 6376 §3.6.2.2); temperror on DNS trouble, permerror if absent."""
    name = f"{selector}._domainkey.{domain}"
    try:
        records = await lib_dns.txt(name)
    except lib_dns.DnsError as error:
        raise _KeyLookupError("temperror", f"key lookup: {error.reason}") from None
    if not records:
        raise _KeyLookupError("permerror", f"no key published at {name}")
    # Several records: undefined (§3.6.2.2); the first that looks like a key is taken.
    chosen = next((r for r in records if re.search(r"(^|;)\s*p\s*=", r)), records[0])
    return chosen.encode("utf-8")


def _tags(value: bytes) -> dict[bytes, bytes]:
    return dict(parse_tag_value(value))


def _text(tags: dict[bytes, bytes], tag: bytes) -> str:
    return tags.get(tag, b"").decode("ascii", "replace").strip()


def _check(
    raw: bytes, index: int, record: bytes, parsed: dkimpy.DKIM | None = None
) -> tuple[Result, str]:
    """dkimpy's verdict on signature ``index`` with ``record`` as its key (blocking).
    ``parsed``: the message as dkimpy already split it, when no other verification uses it
    at the same time (dkimpy keeps the signature being verified in the object)."""
    verifier = dkimpy.DKIM(raw) if parsed is None else parsed
    try:
        ok = verifier.verify(index, dnsfunc=lambda _name, timeout=5: record)
    except dkimpy.KeyFormatError as error:
        return "permerror", f"key: {error}"
    except dkimpy.ValidationError as error:
        return "fail", str(error)  # e.g. the body hash mismatch (RFC 6376 §6.1.3)
    except dkimpy.DKIMException as error:
        return "permerror", str(error)
    return ("pass", "") if ok else ("fail", "signature does not verify")


async def _verify_one(
    raw: bytes, index: int, value: bytes, now: float, parsed: dkimpy.DKIM | None = None
) -> DkimResult:
    try:
        tags = _tags(value)
    except InvalidTagValueList as error:
        return DkimResult("neutral", "", "", "", f"malformed DKIM-Signature: {error}")
    domain, selector, algorithm = _text(tags, b"d"), _text(tags, b"s"), _text(tags, b"a")

    def result(outcome: Result, reason: str) -> DkimResult:
        return DkimResult(outcome, domain.lower(), selector, algorithm, reason)

    try:
        dkimpy.validate_signature_fields(tags)
    except dkimpy.ValidationError as error:
        # RFC 8601 §2.7.1 "neutral": the signature has syntax errors.
        return result("neutral", f"malformed DKIM-Signature: {error}")
    if b"x" in tags and int(tags[b"x"]) < now:
        # RFC 6376 §3.5 x=: past it, the signature is not valid (dkimpy allows 10 hours).
        return result("fail", f"signature expired at x={int(tags[b'x'])}")
    try:
        record = await _fetch_key(selector, domain)
    except _KeyLookupError as error:
        return result(error.result, error.reason)
    try:
        dkimpy.evaluate_pk(f"{selector}._domainkey.{domain}".encode(), record)
    except (dkimpy.KeyFormatError, ValueError) as error:
        return result("permerror", f"unusable key record: {error}")
    outcome, reason = await asyncio.to_thread(_check, raw, index, record, parsed)
    return result(outcome, reason)


async def verify(message: Message | bytes) -> list[DkimResult]:
    """Verify every DKIM-Signature of ``message`` (the data hook's Message, or the raw bytes);
    one :class:`DkimResult` per signature, top first; empty if there is none (RFC 8601 "none").

    Never raises for the message's or DNS's sake: a key lookup that times out or fails is
    ``temperror``, a key that is not published ``permerror``, a malformed signature field
    ``neutral``, a signature that does not verify or has expired ``fail``."""
    raw = message if isinstance(message, bytes) else await message.raw()
    try:
        parsed = dkimpy.DKIM(raw)
    except dkimpy.DKIMException as error:
        # A header section dkimpy cannot split (a line that is no field): no signature in it
        # can be checked (RFC 8601 §2.7.1 permerror), and if there is none, there is none.
        if b"dkim-signature:" not in raw.lower():
            return []
        return [DkimResult("permerror", "", "", "", f"message not parseable: {error}")]
    values = [value for name, value in parsed.headers if name.lower() == b"dkim-signature"]
    now = time.time()
    # The first signature reuses the parse above (splitting the message again cost as much as
    # a tenth of a verification); the others verify concurrently, each on its own copy.
    checks = (_verify_one(raw, i, v, now, parsed if i == 0 else None) for i, v in enumerate(values))
    return list(await asyncio.gather(*checks))
