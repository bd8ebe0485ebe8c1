"""8-bit MIME to 7 bits, for a server that does not offer 8BITMIME (RFC 6152 §3).

RFC 6152 §3 leaves a client two ways with 8-bit data for such a server: convert it to 7 bits
(RFC 2045 quoted-printable or base64) or return it as undeliverable. Postfix converts
(``disable_mime_output_conversion = no``); so does Mailwarden: every leaf MIME part whose
body holds 8-bit octets is re-encoded as quoted-printable (text) or base64 (anything else),
its Content-Transfer-Encoding header changed, and everything else left byte for byte:
headers, boundaries, preambles, 7-bit parts. A signature over a converted body no longer
verifies, which is why Postfix's documentation warns about the same conversion.

What cannot be converted: 8-bit octets in a header field (that is SMTPUTF8's business, RFC
6532), in a multipart preamble or epilogue, or in a part declared ``binary`` with lines that
would not survive (an RFC 3030 BINARYMIME body): :func:`to_seven_bit` returns None, and the
caller sends the message unchanged, as Postfix does when it cannot convert.
"""

from __future__ import annotations

import base64
import quopri
import re

_CRLF = b"\r\n"
_BOUNDARY = re.compile(rb'boundary\s*=\s*(?:"([^"]+)"|([^\s;]+))', re.IGNORECASE)
_CTE = re.compile(rb"^content-transfer-encoding\s*:", re.IGNORECASE | re.MULTILINE)
_TYPE = re.compile(rb"^content-type\s*:\s*([^;\r\n]+)", re.IGNORECASE | re.MULTILINE)
MAX_DEPTH = 50  # nested multiparts followed, as the receiving side's MIME walk allows


def to_seven_bit(message: bytes) -> bytes | None:
    """``message`` (CRLF line ends) with every 8-bit leaf part re-encoded, or None when it
    holds 8-bit octets that cannot be (see the module docstring)."""
    if message.isascii():
        return message
    return _entity(message, 0)


def _entity(entity: bytes, depth: int) -> bytes | None:
    """One MIME entity: its header section, then its body converted."""
    split = entity.find(b"\r\n\r\n")
    if split < 0:
        return None if not entity.isascii() else entity  # a header section only
    headers, body = entity[: split + 2], entity[split + 4 :]
    if not headers.isascii():
        return None  # 8-bit header fields: SMTPUTF8, not a transfer encoding
    unfolded = re.sub(rb"\r\n[ \t]+", b" ", headers)
    content_type = _TYPE.search(unfolded)
    kind = content_type.group(1).strip().lower() if content_type else b"text/plain"
    if kind.startswith(b"multipart/"):
        if depth >= MAX_DEPTH:
            return None
        boundary = _BOUNDARY.search(unfolded)
        if boundary is None:
            return None
        converted = _multipart(body, boundary.group(1) or boundary.group(2), depth)
        return None if converted is None else headers + _CRLF + converted
    if kind == b"message/rfc822" and depth < MAX_DEPTH:
        inner = _entity(body, depth + 1)
        return None if inner is None else headers + _CRLF + inner
    if body.isascii():
        return entity
    return _reencode(headers, body, kind)


def _multipart(body: bytes, boundary: bytes, depth: int) -> bytes | None:
    """The body of a multipart: its parts converted, delimiters and the rest kept."""
    delimiter = b"--" + boundary
    # Delimiter lines start a line (RFC 2046 §5.1.1): split at CRLF--boundary.
    pieces = (_CRLF + body).split(_CRLF + delimiter)
    preamble, parts = pieces[0], pieces[1:]
    if not preamble.isascii():
        return None
    out = [preamble[len(_CRLF) :] if preamble.startswith(_CRLF) else preamble]
    for piece in parts:
        if piece.startswith(b"--"):  # the close delimiter, then the epilogue
            if not piece.isascii():
                return None
            out.append(delimiter + piece)
            continue
        line_end = piece.find(_CRLF)
        if line_end < 0:
            return None
        padding, part = piece[:line_end], piece[line_end + 2 :]
        converted = _entity(part, depth + 1)
        if converted is None:
            return None
        out.append(delimiter + padding + _CRLF + converted)
    return _CRLF.join(out)


def _reencode(headers: bytes, body: bytes, kind: bytes) -> bytes | None:
    """A leaf part with 8-bit octets: quoted-printable for text, base64 for the rest."""
    declared = _declared_encoding(headers)
    if declared not in (b"", b"7bit", b"8bit", b"binary"):
        return None  # 8-bit octets inside a part that says it is encoded: leave it
    if kind.startswith(b"text/"):
        lines = body.split(_CRLF)
        # RFC 2045 §6.7: line breaks stay hard line breaks, each line encoded on its own.
        encoded = _CRLF.join(
            quopri.encodestring(line, quotetabs=False).replace(b"\n", _CRLF) for line in lines
        )
        name = b"quoted-printable"
    else:
        encoded, name = base64.encodebytes(body).replace(b"\n", _CRLF), b"base64"
    return _with_encoding(headers, name) + _CRLF + encoded


def _declared_encoding(headers: bytes) -> bytes:
    unfolded = re.sub(rb"\r\n[ \t]+", b" ", headers)
    match = re.search(
        rb"^content-transfer-encoding\s*:\s*([^\s;(]+)", unfolded, re.IGNORECASE | re.MULTILINE
    )
    return match.group(1).lower() if match else b""


def _with_encoding(headers: bytes, encoding: bytes) -> bytes:
    """``headers`` with its Content-Transfer-Encoding field (folded lines and all) replaced,
    or one added at the end."""
    field = b"Content-Transfer-Encoding: " + encoding + _CRLF
    lines = headers.split(_CRLF)[:-1]  # headers ends with CRLF
    out: list[bytes] = []
    replaced = skipping = False
    for line in lines:
        if skipping and line[:1] in (b" ", b"\t"):
            continue  # a folded continuation of the field being replaced
        skipping = False
        if _CTE.match(line):
            skipping = True
            if not replaced:
                out.append(field[:-2])
                replaced = True
            continue
        out.append(line)
    if not replaced:
        out.append(field[:-2])
    return _CRLF.join(out) + _CRLF
