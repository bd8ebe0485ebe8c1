"""Content-Transfer-Encodings (RFC 2045 §6) for edited parts, and the checks that choose one.

Mail must stay 7-bit safe where it was (RFC 2045 §2.7: no octet over 127, no NUL, CR and LF
only as CRLF, lines of at most 998 octets, RFC 5322 §2.1.1), and 8-bit data still keeps to
lines of at most 998 octets (RFC 2045 §2.8). What does not fit is written quoted-printable
(text) or base64 (anything).
"""

from __future__ import annotations

import base64
import binascii
import re

MAX_LINE = 998  # octets per line, CRLF excluded (RFC 5322 §2.1.1)
_BARE_NEWLINE = re.compile(rb"\r(?!\n)|(?<!\r)\n")
_BASE64_LINE = 76  # RFC 2045 §6.8


def decode(body: bytes, encoding: str) -> bytes | None:
    """The content of a body in ``encoding``; None for an encoding this module cannot undo, or
    base64 that is not base64 (editing it would lose what the sender meant)."""
    if encoding in ("", "7bit", "8bit", "binary"):
        return body
    if encoding == "quoted-printable":
        return binascii.a2b_qp(body)
    if encoding == "base64":
        try:
            return base64.b64decode(re.sub(rb"\s+", b"", body), validate=True)
        except (binascii.Error, ValueError):
            return None
    return None


def encode(content: bytes, encoding: str) -> bytes:
    if encoding == "base64":
        return encode_base64(content)
    if encoding == "quoted-printable":
        return encode_quoted_printable(content)
    return content


def encode_base64(content: bytes) -> bytes:
    text = base64.b64encode(content)
    lines = [text[i : i + _BASE64_LINE] for i in range(0, len(text), _BASE64_LINE)]
    return b"".join(line + b"\r\n" for line in lines)


def encode_quoted_printable(content: bytes) -> bytes:
    """Text content, its line breaks as CRLF, quoted-printable with CRLF soft breaks."""
    text = canonical_newlines(content)
    ends_in_newline = text.endswith(b"\r\n")
    # The encoder takes its line-break style from the first break; one is always there.
    encoded = binascii.b2a_qp(text if ends_in_newline else text + b"\r\n", istext=True)
    encoded = encoded.replace(b"\n.", b"\n=2E")  # no line of a lone dot, whatever transport
    return encoded if ends_in_newline else encoded[:-2]


def canonical_newlines(text: bytes) -> bytes:
    """Line breaks as CRLF, text's canonical form (RFC 2045 §2.10)."""
    return _BARE_NEWLINE.sub(b"\r\n", text)


def _long_line(data: bytes) -> bool:
    return any(len(line) > MAX_LINE for line in data.split(b"\r\n"))


def fits_7bit(data: bytes) -> bool:
    return (
        data.isascii()
        and b"\x00" not in data
        and not _BARE_NEWLINE.search(data)
        and not _long_line(data)
    )


def fits_8bit(data: bytes) -> bool:
    return b"\x00" not in data and not _BARE_NEWLINE.search(data) and not _long_line(data)


def collides(body: bytes, boundaries: list[bytes]) -> bool:
    """Whether a line of ``body`` could be read as a delimiter of an enclosing multipart."""
    if not boundaries:
        return False
    lines = body.split(b"\r\n")
    return any(line.startswith(b"--" + boundary) for line in lines for boundary in boundaries)
