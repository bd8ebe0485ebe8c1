"""Spam scoring with SpamAssassin's daemon: ``result = await spamassassin.check(message)``.

The spamd protocol (spamd's PROTOCOL document, version 1.5): a request line ``SYMBOLS
SPAMC/1.5``, a ``Content-length`` header with the message's size in octets, optionally ``User``,
a blank line and the message. spamd answers ``SPAMD/1.1 0 EX_OK``, a header ``Spam: True ;
1000.0 / 5.0`` (verdict, score, required score), a blank line and the names of the rules that
hit, comma-separated; then it closes the connection. A non-zero code is an error (sysexits(3)
numbers: 76 EX_PROTOCOL, 75 EX_TEMPFAIL, …).

As spamc does (its ``--max-size``), a message over ``max_bytes`` is not sent: SpamAssassin's
rules are written for ordinary mail and a very large one only costs time. The result then says
``skipped``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from dataclasses import dataclass

from mailwarden.lib.scanners import (
    ScannerError,
    ScannerProtocolError,
    ScannerRefused,
    ScannerTimeout,
    ScannerUnavailable,
    check_message,
    check_timeout,
    message_bytes,
    open_socket,
    settings,
)
from mailwarden.metrics.instruments import observe_scanner
from mailwarden.policy.context import Message

__all__ = ["DEFAULT_MAX_BYTES", "ScannerError", "SpamResult", "check"]

SCANNER = "spamd"
DEFAULT_MAX_BYTES = 500 * 1024  # spamc's default --max-size
MAX_REPLY = 1024 * 1024  # the rule names of one message; more than this is not spamd

_STATUS = re.compile(rb"SPAMD/(\d+)\.(\d+) +(\d+) *(.*)")
# "Spam: True ; 15.2 / 5.0"; spamd before 3.0 said Yes/No.
_SPAM = re.compile(r"(?i)(true|false|yes|no) *; *(-?\d+(?:\.\d+)?) */ *(-?\d+(?:\.\d+)?)")


@dataclass(frozen=True, slots=True)
class SpamResult:
    """spamd's verdict: the message's ``score``, the ``threshold`` (spamd's required_score)
    and ``is_spam`` (score ≥ threshold, as spamd decided it), and ``rules``, the names of the
    rules that hit (e.g. ``("GTUBE", "MISSING_DATE")``).

    ``skipped``: the message was over ``max_bytes`` and not sent; score and threshold are then
    0.0, is_spam is False and rules is empty."""

    score: float
    threshold: float
    is_spam: bool
    rules: tuple[str, ...] = ()
    skipped: bool = False


async def check(
    message: Message | bytes,
    *,
    address: str | None = None,
    timeout: float | None = None,
    user: str | None = None,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
) -> SpamResult:
    """Ask spamd for a verdict on the message as stored (headers and body as edited so far).

    ``address`` is ``host:port`` or a unix socket path (default ``[library] spamd_address``);
    ``timeout`` bounds the whole call in seconds (default ``[library] scanner_timeout``);
    ``user`` names the user whose preferences spamd applies (spamc's ``-u``); a message over
    ``max_bytes`` octets (None: no limit) is not sent and comes back ``skipped``. Raises a
    :class:`ScannerError` when there is no verdict: spamd down (ScannerUnavailable), too slow
    (ScannerTimeout), an error reply (ScannerRefused), an answer that is not spamd's
    (ScannerProtocolError)."""
    check_message(message)
    address = address or settings().spamd_address
    seconds = check_timeout(timeout)
    if user is not None and (not user or any(c in user for c in "\r\n")):
        raise ValueError(f"expected a user name on one line, got {user!r}")
    if isinstance(message, Message) and max_bytes is not None and message.size > max_bytes:
        return SpamResult(0.0, 0.0, False, skipped=True)
    data = message_bytes(message)
    if max_bytes is not None and len(data) > max_bytes:
        return SpamResult(0.0, 0.0, False, skipped=True)
    request = [b"SYMBOLS SPAMC/1.5", b"Content-length: %d" % len(data)]
    if user is not None:
        request.append(b"User: " + user.encode())
    head = b"\r\n".join(request) + b"\r\n\r\n"
    started = time.perf_counter()
    try:
        async with asyncio.timeout(seconds):
            reply = await _exchange(head, data, address)
        return parse_reply(reply, address)
    except TimeoutError:
        raise ScannerTimeout(SCANNER, address, f"no verdict within {seconds:g}s") from None
    finally:
        # Every call that reached spamd, verdict or ScannerError (a skipped message is not
        # sent, so it is not a scanner call).
        observe_scanner(SCANNER, time.perf_counter() - started)


async def _exchange(head: bytes, data: bytes, address: str) -> bytes:
    loop = asyncio.get_running_loop()
    sock = await open_socket(SCANNER, address)
    try:
        # spamd may close early (it does after an error line): its answer says why.
        with contextlib.suppress(OSError):
            await loop.sock_sendall(sock, head + data)
        chunks: list[bytes] = []
        size = 0
        # spamd closes the connection after its answer; read to the end, bounded.
        while size <= MAX_REPLY:
            try:
                chunk = await loop.sock_recv(sock, 64 * 1024)
            except OSError as error:
                if chunks:
                    break  # a reset after the answer: the answer stands
                raise ScannerUnavailable(SCANNER, address, f"connection lost: {error}") from None
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        sock.close()
    return b"".join(chunks)


def parse_reply(reply: bytes, address: str) -> SpamResult:
    """Read spamd's whole answer to SYMBOLS (status line, headers, rule names)."""
    if not reply:
        raise ScannerUnavailable(SCANNER, address, "connection closed without a verdict")
    if len(reply) > MAX_REPLY:
        raise ScannerProtocolError(SCANNER, address, f"answer over {MAX_REPLY} octets")
    head, separator, body = reply.partition(b"\r\n\r\n")
    status_line, *header_lines = head.split(b"\r\n")
    status = _STATUS.fullmatch(status_line.rstrip(b"\r\n"))
    if status is None:
        raise ScannerProtocolError(SCANNER, address, f"not a spamd answer: {status_line[:200]!r}")
    code, text = int(status[3]), status[4].decode("utf-8", "replace").strip()
    if code != 0:
        raise ScannerRefused(SCANNER, address, f"error {code}: {text}")
    if not separator:
        raise ScannerProtocolError(SCANNER, address, "answer ends inside its headers")
    headers = _headers(header_lines, address)
    spam = _SPAM.fullmatch(headers.get("spam", "").strip())
    if spam is None:
        raise ScannerProtocolError(SCANNER, address, "answer without a valid Spam header")
    length = headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) != len(body)):
        raise ScannerProtocolError(
            SCANNER, address, f"Content-length {length} but {len(body)} octets of rules"
        )
    rules = tuple(name for name in body.decode("utf-8", "replace").strip().split(",") if name)
    is_spam = spam[1].lower() in ("true", "yes")
    return SpamResult(float(spam[2]), float(spam[3]), is_spam, rules)


def _headers(lines: list[bytes], address: str) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in lines:
        name, colon, value = line.decode("utf-8", "replace").partition(":")
        if not colon or not name.strip():
            raise ScannerProtocolError(SCANNER, address, f"bad header line {line[:200]!r}")
        headers[name.strip().lower()] = value.strip()
    return headers
