"""Where a domain wants its TLS reports: the ``_smtp._tls.<domain>`` TXT record (RFC 8460 §3).

    v=TLSRPTv1; rua=mailto:tlsrpt@example.com,https://reports.example.com/tlsrpt

:func:`parse_record` is the §3 grammar; :func:`lookup` applies the selection rules: records
not starting with ``v=TLSRPTv1`` are discarded and unless exactly one remains, and it is
valid, the domain does not take reports (§3: "senders MUST assume the recipient domain does
not implement TLSRPT").
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass

from mailwarden.lib import dns as lib_dns

VERSION = "v=TLSRPTv1"
# §3: tlsrpt-ext-name and tlsrpt-ext-value (no "=", ";", space or control characters).
_EXT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,31}")
_EXT_VALUE = re.compile(r"[\x21-\x3a\x3c\x3e-\x7e]+")
_WSP = " \t"
SCHEMES = ("mailto", "https")  # §3: the rua schemes defined; others are ignored


class TlsRptRecordError(ValueError):
    """A ``_smtp._tls`` TXT record that does not follow RFC 8460 §3."""


@dataclass(frozen=True, slots=True)
class TlsRptRecord:
    """A domain's reporting addresses, as written (``mailto:…`` and ``https://…``)."""

    rua: tuple[str, ...]

    @property
    def destinations(self) -> tuple[str, ...]:
        """The URIs of a scheme this sender can use, in the record's order."""
        return tuple(uri for uri in self.rua if uri.split(":", 1)[0].lower() in SCHEMES)


def parse_record(text: str) -> TlsRptRecord:
    """One TXT record (its strings joined). Unknown fields are ignored (§3: parsers must
    accept a superset). Raises TlsRptRecordError naming what is wrong."""
    fields = [part.strip(_WSP) for part in text.split(";")]
    if fields and fields[-1] == "":
        fields.pop()  # the optional trailing field-delim
    if not fields or fields[0] != VERSION:
        raise TlsRptRecordError(f"the record does not start with {VERSION!r}")
    rua: list[str] = []
    seen_rua = False
    for field in fields[1:]:
        name, equals, value = field.partition("=")
        if not equals:
            raise TlsRptRecordError(f"field {field!r} is not name=value")
        if name == "rua":
            seen_rua = True
            for uri in value.split(","):
                uri = uri.strip(_WSP)
                if not _is_uri(uri):
                    raise TlsRptRecordError(f"rua {uri!r} is not a URI")
                rua.append(uri)
        elif not (_EXT_NAME.fullmatch(name) and _EXT_VALUE.fullmatch(value)):
            raise TlsRptRecordError(f"field {field!r} is not a valid extension")
    if not seen_rua:
        raise TlsRptRecordError("the record has no rua field (RFC 8460 §3: it is required)")
    return TlsRptRecord(tuple(rua))


def _is_uri(text: str) -> bool:
    # RFC 3986 scheme ":" then something, with no space or control characters; "," and ";"
    # must have been percent-encoded (they delimit the record).
    scheme, colon, rest = text.partition(":")
    if not colon or not rest or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.\-]*", scheme):
        return False
    return all(0x21 <= ord(char) <= 0x7E for char in rest)


def mailto_address(uri: str) -> str:
    """The address of a ``mailto:`` URI (RFC 6068), without any ``?`` header fields."""
    address = uri.split(":", 1)[1].split("?", 1)[0]
    return urllib.parse.unquote(address)


async def lookup(domain: str) -> TlsRptRecord | None:
    """The domain's record, or None when it publishes none (or not exactly one valid one).
    Raises lib.dns.DnsError for a temporary DNS failure (try again later)."""
    texts = await lib_dns.txt(f"_smtp._tls.{domain.rstrip('.')}.")
    candidates = [
        text for text in texts if text.startswith(VERSION) and text[len(VERSION) :][:1] in ";\t "
    ]
    if len(candidates) != 1:
        return None
    try:
        return parse_record(candidates[0])
    except TlsRptRecordError:
        return None
