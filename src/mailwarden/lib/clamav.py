"""Virus scanning with ClamAV's daemon: ``result = await clamav.scan(message)``.

The message is streamed to clamd with its INSTREAM command (clamd(8), "INSTREAM"): the
command ``zINSTREAM\\0``, then chunks each led by its length as 4 octets in network byte order,
then a chunk of length zero. clamd answers one NUL-terminated line, ``stream: OK``,
``stream: NAME FOUND`` or ``… ERROR``, and closes the connection. Nothing is written to disk
for clamd to read, so clamd needs no access to the spool; it can run on another machine.

clamd stops reading past its ``StreamMaxLength`` and answers ``INSTREAM size limit
exceeded``: that is :class:`~mailwarden.lib.scanners.ScannerRefused` (the message is not
scanned, so it must not be accepted as clean).
"""

from __future__ import annotations

import asyncio
import socket
import struct
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
    message_chunks,
    open_socket,
    settings,
)
from mailwarden.metrics.instruments import observe_scanner
from mailwarden.policy.context import Message

__all__ = ["ClamResult", "ScannerError", "scan"]

SCANNER = "clamd"
MAX_REPLY = 64 * 1024  # a verdict line is short; more than this is not clamd


@dataclass(frozen=True, slots=True)
class ClamResult:
    """clamd's verdict: ``clean``, or the signature name in ``virus`` (e.g.
    "Win.Test.EICAR_HDB-1")."""

    clean: bool
    virus: str | None = None


async def scan(
    message: Message | bytes, *, address: str | None = None, timeout: float | None = None
) -> ClamResult:
    """Stream the message as stored (headers and body as edited so far) to clamd and return
    its verdict. ``address`` is ``host:port`` or a unix socket path (default
    ``[library] clamd_address``); ``timeout`` bounds the whole call in seconds (default
    ``[library] scanner_timeout``). Raises a :class:`ScannerError` when there is no verdict:
    clamd down (ScannerUnavailable), too slow (ScannerTimeout), the message over its
    StreamMaxLength or another error reply (ScannerRefused), an answer that is not clamd's
    (ScannerProtocolError)."""
    check_message(message)
    address = address or settings().clamd_address
    seconds = check_timeout(timeout)
    started = time.perf_counter()
    try:
        async with asyncio.timeout(seconds):
            reply = await _instream(message, address)
        return parse_reply(reply, address)
    except TimeoutError:
        raise ScannerTimeout(SCANNER, address, f"no verdict within {seconds:g}s") from None
    finally:
        # Every call, verdict or ScannerError: a slow or failing clamd shows on /metrics.
        observe_scanner(SCANNER, time.perf_counter() - started)


async def _instream(message: Message | bytes, address: str) -> bytes:
    loop = asyncio.get_running_loop()
    sock = await open_socket(SCANNER, address)
    # The verdict is awaited while the message is still being sent: clamd answers and closes
    # as soon as the stream is over its StreamMaxLength, and we stop sending then.
    verdict = asyncio.ensure_future(_read_verdict(loop, sock, address))
    try:
        try:
            await loop.sock_sendall(sock, b"zINSTREAM\0")
            for chunk in message_chunks(message):
                if verdict.done():
                    break
                if chunk:
                    await loop.sock_sendall(sock, struct.pack(">I", len(chunk)) + chunk)
            else:
                await loop.sock_sendall(sock, struct.pack(">I", 0))
        except OSError:
            pass  # clamd closed the connection: its verdict, if any, says why
        return await verdict
    finally:
        try:
            # Unregister the pending read before the socket closes (the call's timeout).
            verdict.cancel()
            await asyncio.wait([verdict])
            if not verdict.cancelled():
                verdict.exception()  # retrieved: the caller has its own error already
        finally:
            sock.close()


async def _read_verdict(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, address: str
) -> bytes:
    received = b""
    while b"\0" not in received and len(received) < MAX_REPLY:
        try:
            piece = await loop.sock_recv(sock, 4096)
        except OSError as error:
            if received:
                break  # a reset after the answer: the answer stands
            raise ScannerUnavailable(SCANNER, address, f"connection lost: {error}") from None
        if not piece:
            break
        received += piece
    return received


def parse_reply(reply: bytes, address: str) -> ClamResult:
    """Read clamd's answer to INSTREAM (``stream: OK``, ``stream: NAME FOUND``, ``… ERROR``)."""
    if not reply:
        raise ScannerUnavailable(SCANNER, address, "connection closed without a verdict")
    line = reply.rstrip(b"\0").decode("utf-8", "replace").strip()
    if line.endswith(" ERROR"):
        reason = line.removesuffix(" ERROR").rstrip(". ")
        if "size limit exceeded" in reason:
            reason += " (the message is larger than clamd's StreamMaxLength)"
        raise ScannerRefused(SCANNER, address, reason)
    verdict = line.removeprefix("stream:").strip() if line.startswith("stream:") else None
    if verdict == "OK":
        return ClamResult(clean=True)
    if verdict and verdict.endswith(" FOUND") and verdict.removesuffix(" FOUND").strip():
        return ClamResult(clean=False, virus=verdict.removesuffix(" FOUND").strip())
    raise ScannerProtocolError(SCANNER, address, f"not a clamd verdict: {line[:200]!r}")
