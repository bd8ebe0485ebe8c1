"""Streaming a message into the spool while it arrives.

The header section is kept in memory (it is what scripts edit; capped at ``max_header_bytes``).
The body stays in memory up to ``memory_threshold`` bytes, then spills to a file in the spool's
data directory, so a 50 MB message costs no more memory than a small one. Nothing here makes
the message durable: :class:`mailwarden.spool.store.SpoolStore` does that at commit.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

from mailwarden.smtp import replies
from mailwarden.smtp.replies import Reply
from mailwarden.spool.errors import SpoolError, reply_for_os_error

MAX_HEADER_BYTES = 1024 * 1024


class MessageWriter:
    """One message being received. Failure: ``write`` never raises for the peer's content; it
    records the reply to give at end of data in ``error`` and drops the rest. It raises
    SpoolError only for local I/O failures (full disk, I/O error)."""

    def __init__(
        self,
        message_id: str,
        spill_path_for: Callable[[str], Path],
        memory_threshold: int,
        max_header_bytes: int = MAX_HEADER_BYTES,
    ) -> None:
        self.message_id = message_id
        self._spill_path_for = spill_path_for
        self._spill_path: Path | None = None
        self._threshold = memory_threshold
        self._max_header = max_header_bytes
        self._header = bytearray()
        self._in_header = True
        self.has_separator = False  # whether a blank line ended the header section
        self._body = bytearray()
        self._fd: int | None = None
        self.body_size = 0
        self.error: Reply | None = None

    @property
    def spill_path(self) -> Path:
        """Where the body goes once it outgrows memory (computed only for large messages)."""
        if self._spill_path is None:
            self._spill_path = self._spill_path_for(self.message_id)
        return self._spill_path

    @property
    def spilled(self) -> bool:
        return self._fd is not None

    @property
    def spill_fd(self) -> int | None:
        return self._fd

    def write(self, data: bytes) -> None:
        if self.error is not None:
            return
        if self._in_header:
            data = self._take_header(data)
            if not data:
                return
        self._write_body(data)

    def _take_header(self, data: bytes) -> bytes:
        header = self._header
        start = max(len(header) - 3, 0)
        header += data
        if header[:2] == b"\r\n":  # no header fields at all: the body starts at once
            end, body_start = 0, 2
        else:
            found = header.find(b"\r\n\r\n", start)
            end, body_start = (found + 2, found + 4) if found >= 0 else (-1, -1)
        if end < 0:
            if len(header) > self._max_header:
                self.error = replies.HEADER_TOO_BIG
                self._header = bytearray()
            return b""
        rest = bytes(header[body_start:])
        del header[end:]
        self._in_header = False
        self.has_separator = True
        return rest

    def _write_body(self, data: bytes) -> None:
        self.body_size += len(data)
        if self._fd is None:
            self._body += data
            if len(self._body) > self._threshold:
                self._spill()
            return
        try:
            _write_all(self._fd, data)
        except OSError as error:
            raise SpoolError(reply_for_os_error(error), str(error)) from error

    def _spill(self) -> None:
        try:
            self._fd = os.open(self.spill_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            _write_all(self._fd, self._body)
        except OSError as error:
            self.discard()
            raise SpoolError(reply_for_os_error(error), str(error)) from error
        self._body = bytearray()

    def replace_body(self, pieces: Iterable[bytes]) -> None:
        """Store ``pieces`` as the body instead of what was received (a body the data hook
        edited): in memory up to the threshold, else in a new spill file beside the old one,
        which is removed once the new body is written. Raises SpoolError for local I/O
        failures, leaving no new file behind."""
        old_fd, old_path = self._fd, self._spill_path if self._fd is not None else None
        self._fd, self._body, self.body_size = None, bytearray(), 0
        if old_path is not None:
            self._spill_path = old_path.with_name(old_path.name + "-edited")
        try:
            for piece in pieces:
                self._write_body(piece)
        except BaseException:
            self.discard()
            self._fd, self._spill_path = old_fd, old_path
            raise
        if self.body_size:
            self.has_separator = True
        if old_fd is not None and old_path is not None:
            os.close(old_fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(old_path)
        if self._fd is None:
            self._spill_path = None

    def header_block(self) -> bytes:
        """The header section as received, each field ending in CRLF, without the blank line."""
        return bytes(self._header)

    def memory_body(self) -> bytes | None:
        """The body if it stayed in memory, else None (it is in ``spill_path``)."""
        return None if self._fd is not None else bytes(self._body)

    def open_body(self) -> BinaryIO:
        if self._fd is None:
            return io.BytesIO(bytes(self._body))
        return open(self.spill_path, "rb")

    def discard(self) -> None:
        """Forget the message: close and remove any spill file. Safe to call twice."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.spill_path)
        self._body = bytearray()
        self._header = bytearray()

    def close_file(self) -> None:
        """Close the spill file after it was made durable (the store keeps it)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
