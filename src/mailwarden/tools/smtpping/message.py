"""The message smtpping sends, byte for byte as smtpping 1.1 builds it.

The generated message is four header lines, a blank line, then 74-byte body lines
until the whole is at least ``size`` KiB. With DATA the payload ends in CRLF.CRLF;
with CHUNKING it is sent whole as one ``BDAT <n> LAST`` chunk without the dot.
The size announced in the PING header is what goes on the wire after RCPT:
the DATA payload, or the BDAT command line plus its chunk.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

BODY_LINE = b"AABBCCDDEEFFGGHHIIJJKKLLMMNNOOPPQQRRSSTTUUVVWWXXYYZZ00112233445566778899\r\n"
DATA_TERMINATOR = b"\r\n.\r\n"


@dataclass(frozen=True, slots=True)
class Payload:
    """What follows RCPT: ``wire`` is sent as is (after the 354 for DATA)."""

    wire: bytes
    chunking: bool

    @property
    def announced_size(self) -> int:
        return len(self.wire)


def generated_message(sender: str, recipient: str, size_kib: int) -> bytes:
    """The 1.1 test message without its DATA terminator."""
    head = (
        b"Subject: SMTP Ping\r\n"
        b"Content-Type: text/plain\r\n"
        + b"From: <"
        + sender.encode("utf-8", "surrogateescape")
        + b">\r\n"
        + b"To: <"
        + recipient.encode("utf-8", "surrogateescape")
        + b">\r\n"
        + b"\r\n"
    )
    target = size_kib * 1024
    # 1.1 appends lines while size // 1024 < size_kib, i.e. until size >= target.
    missing = max(0, target - len(head))
    lines = -(-missing // len(BODY_LINE))
    return head + BODY_LINE * lines


def read_message_file(path: str) -> bytes:
    """Read a -f file. On failure 1.1 warns on stderr and sends an empty message."""
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:
        print(f"warning: file {path} could not be opened", file=sys.stderr)
        return b""


def build_payload(
    *, sender: str, recipient: str, size_kib: int, file: str | None, chunking: bool
) -> Payload:
    """Build the bytes sent after RCPT, as 1.1 does.

    A -f file is sent unchanged: 1.1 neither dot-stuffs it nor adds a missing final
    CRLF, and only appends ``.\\r\\n`` (so the file should end with a line break).
    """
    if file is not None:
        body = read_message_file(file)
        terminator = b".\r\n"
    else:
        body = generated_message(sender, recipient, size_kib)
        terminator = DATA_TERMINATOR
    if chunking:
        return Payload(b"BDAT %d LAST\r\n" % len(body) + body, chunking=True)
    return Payload(body + terminator, chunking=False)
