"""Splitting the server's bytes into whole SMTP replies, for both smtpping clients."""

from __future__ import annotations

import sys


class ReplyReader:
    """Collects bytes and hands out complete replies as ``(code, raw reply bytes)``.

    A reply ends with a line whose code is followed by anything but ``-`` (RFC 5321 §4.2.1).
    A malformed code reads as 0, which the callers treat as a failure.
    """

    __slots__ = ("_buffer", "_debug", "_scanned")

    def __init__(self, debug: bool = False) -> None:
        self._buffer = b""
        self._scanned = 0  # lines before this offset were already looked at
        self._debug = debug

    @property
    def empty(self) -> bool:
        """No part of a reply is waiting for the rest of its bytes."""
        return not self._buffer

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buffer = self._buffer + data if self._buffer else data
        position = self._scanned
        reply_start = 0
        replies: list[tuple[int, bytes]] = []
        while True:
            newline = buffer.find(b"\n", position)
            if newline < 0:
                break
            line_start, position = position, newline + 1
            if self._debug:
                sys.stderr.write(f"response {buffer[line_start:position].decode('latin-1')}")
            if newline - line_start >= 4 and buffer[line_start + 3] == 0x2D:  # '-'
                continue
            try:
                code = int(buffer[line_start : line_start + 3])
            except ValueError:
                code = 0
            replies.append((code, buffer[reply_start:position]))
            reply_start = position
        self._buffer = buffer[reply_start:]
        self._scanned = position - reply_start
        return replies
