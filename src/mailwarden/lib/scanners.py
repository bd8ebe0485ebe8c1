"""What the spam and virus scanners (``clamav``, ``spamassassin``, ``rspamd``) share: the one
exception family a script catches, the addresses they talk to, and the message as octets.

A scanner that is down, refuses the request, does not answer in time or answers something that
cannot be parsed raises :class:`ScannerError`; a script turns it into a 4xx (``Defer``) so the
client tries again later instead of the message being accepted unscanned or bounced.

Where each scanner listens and how long a call may take come from ``[library]``
(:func:`configure`, called by :func:`mailwarden.lib.backends.configure`); every call can
override them with ``address=`` / ``url=`` and ``timeout=``.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from dataclasses import dataclass

from mailwarden.config.library import (
    DEFAULT_CLAMD_ADDRESS,
    DEFAULT_RSPAMD_URL,
    DEFAULT_SCANNER_TIMEOUT,
    DEFAULT_SPAMD_ADDRESS,
    LibrarySettings,
    split_address,
)
from mailwarden.policy.context import Message

__all__ = [
    "ScannerError",
    "ScannerProtocolError",
    "ScannerRefused",
    "ScannerTimeout",
    "ScannerUnavailable",
    "Settings",
    "check_message",
    "configure",
    "message_bytes",
    "message_chunks",
    "open_socket",
    "settings",
    "split_address",
]

CHUNK_SIZE = 64 * 1024


class ScannerError(Exception):
    """A scanner gave no verdict: ``scanner`` ("clamd", "spamd", "rspamd") at ``address``
    failed for ``reason``. Every failure of a scanner call is one of the subclasses, so
    ``except ScannerError: raise Defer(…)`` covers them all."""

    def __init__(self, scanner: str, address: str, reason: str) -> None:
        super().__init__(f"{scanner} at {address}: {reason}")
        self.scanner = scanner
        self.address = address
        self.reason = reason


class ScannerUnavailable(ScannerError):
    """No connection: the daemon is not running, the port is closed or the socket is missing."""


class ScannerTimeout(ScannerError):
    """The daemon did not answer (connect, send and verdict together) within the timeout."""


class ScannerRefused(ScannerError):
    """The daemon answered but refused to scan: a message over its size limit, an error reply."""


class ScannerProtocolError(ScannerError):
    """The answer is not what the protocol says: not a scanner there, or a broken one."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Where the scanners listen and how long one call may take (``[library]``)."""

    clamd_address: str = DEFAULT_CLAMD_ADDRESS
    spamd_address: str = DEFAULT_SPAMD_ADDRESS
    rspamd_url: str = DEFAULT_RSPAMD_URL
    timeout: float = DEFAULT_SCANNER_TIMEOUT


_settings = Settings()


def configure(library: LibrarySettings | None = None) -> None:
    """Take the scanner keys of ``[library]`` (the defaults with None)."""
    global _settings
    if library is None:
        _settings = Settings()
        return
    _settings = Settings(
        library.clamd_address, library.spamd_address, library.rspamd_url, library.scanner_timeout
    )


def settings() -> Settings:
    return _settings


def check_timeout(timeout: float | None) -> float:
    chosen = _settings.timeout if timeout is None else timeout
    if not chosen > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {chosen!r}")
    return chosen


async def open_socket(scanner: str, address: str) -> socket.socket:
    """A connected non-blocking socket, for the loop's ``sock_*`` calls; failure is
    :class:`ScannerUnavailable`. The caller bounds the whole call (this included) with its
    timeout. Not an asyncio stream: a stream whose write fails is closed at once, losing what
    the daemon answered before it closed (clamd over StreamMaxLength, spamd's error line);
    a socket whose send failed can still be read from the kernel's buffer."""
    target = split_address(address)
    loop = asyncio.get_running_loop()
    if isinstance(target, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    else:
        host, port = target
        try:
            family, kind, proto, _, sockaddr = (
                await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            )[0]
        except OSError as error:
            raise ScannerUnavailable(scanner, address, f"cannot resolve: {error}") from None
        sock = socket.socket(family, kind, proto)
        target = sockaddr
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, target)
    except OSError as error:
        sock.close()
        reason = error.strerror or str(error) or type(error).__name__
        raise ScannerUnavailable(scanner, address, f"cannot connect: {reason}") from None
    except BaseException:
        sock.close()  # cancelled (the caller's timeout)
        raise
    return sock


def _head(message: Message) -> bytes:
    # The header section as edited so far and the blank line (RFC 5322 §2.1): what a scanner
    # must see is the message as it will be stored.
    return message.headers.to_bytes() + b"\r\n"


def check_message(message: object) -> Message | bytes:
    """The argument a scanner was given, when it is the data hook's message or bytes."""
    if isinstance(message, Message | bytes | bytearray | memoryview):
        return message
    raise TypeError(f"expected the data hook's message or bytes, got {type(message).__name__}")


def message_chunks(message: Message | bytes) -> Iterator[bytes]:
    """The message as stored (headers as edited, body as edited), a piece at a time, so a
    large spooled body is never held in memory whole."""
    if isinstance(message, bytes | bytearray | memoryview):
        data = memoryview(message)
        for start in range(0, len(data), CHUNK_SIZE):
            yield bytes(data[start : start + CHUNK_SIZE])
        return
    yield _head(check_message(message))
    with message.open_body() as handle:
        while piece := handle.read(CHUNK_SIZE):
            yield piece


def message_bytes(message: Message | bytes) -> bytes:
    """The whole message as stored, in memory (for protocols that send one length first)."""
    if isinstance(message, bytes | bytearray | memoryview):
        return bytes(message)
    return b"".join(message_chunks(message))
