"""Framing for the SMTP server core: small readers that cut the input into its units.

Each reader works on the connection's input buffer (a ``bytearray`` the connection appends
received bytes to, as h11's readers share one receive buffer): ``read(buf)`` consumes what it
can and returns one unit, or None when it needs more bytes. Readers know nothing of states or
commands, so each is tested alone by feeding bytes whole or one at a time.

- :class:`CommandLineReader` yields command lines (RFC 5321 §2.3.8, §4.5.3.1.4),
- :class:`DataReader` yields dot-unstuffed DATA content and the end marker (RFC 5321 §4.5.2),
- :class:`BdatReader` yields the octets of one BDAT chunk (RFC 3030 §2),
- :class:`ContentCheck` judges message content (size, bare CR/LF, NUL, line length) for both.
"""

from __future__ import annotations

import enum

from mailwarden.smtp import replies
from mailwarden.smtp.replies import Reply

_DATA_END = b"\r\n.\r\n"
# Most octets of one DATA line held in memory (less when max_text_line is smaller): the rest of
# a longer line is checked and passed on as it comes, so memory stays bounded however long the
# line is, in strict mode or not.
LINE_HOLD = 1000
# Which content error a refused message reports when it broke several rules (lower wins):
# smuggling first, as it is the one an operator must be able to find in the logs.
_DATA_ERROR_RANK = {
    "bare CR or LF in data": 0,
    "NUL in data": 1,
    "line too long": 2,
    "message too big": 3,
}
_BARE_LF = replies.SYNTAX_ERROR_PARAMETERS.with_text("Bare LF in command; end lines with CRLF")
_BARE_CR = replies.SYNTAX_ERROR_PARAMETERS.with_text("Bare CR in command; end lines with CRLF")
_NUL_IN_DATA = replies.BARE_LINE_ENDING.with_text("NUL character in message data")


class _Marker(enum.Enum):
    END_OF_DATA = "end-of-data"


END_OF_DATA = _Marker.END_OF_DATA
"""What :meth:`DataReader.read` returns for the ``CRLF.CRLF`` that ends the message."""


class CommandLineReader:
    """Cuts command lines (without their CRLF) out of the buffer.

    ``read`` returns the line as ``bytes``, a catalogue :class:`Reply` when the line is
    malformed (too long, bare CR or LF: the connection answers it), or None for "need more".
    An overlong line is discarded up to its end and answered once, so memory stays bounded
    at ``limit`` octets whatever the client sends.
    """

    __slots__ = ("_skipping", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._skipping = False

    def reset(self) -> None:
        self._skipping = False

    def read(self, buf: bytearray) -> bytes | Reply | None:
        newline = buf.find(b"\n")
        if newline < 0:
            if len(buf) > self.limit:
                self._skipping = True
                del buf[:]
            return None
        line = bytes(buf[:newline])
        del buf[: newline + 1]
        if self._skipping or newline > self.limit:
            # The same verdict whether the line came whole or in pieces: a line that would
            # have overflowed the buffer is too long, whatever it contains.
            self._skipping = False
            return replies.LINE_TOO_LONG
        if not line.endswith(b"\r"):
            return _BARE_LF
        if b"\r" in line[:-1]:
            # RFC 5321 §2.3.8: CR and LF only ever travel together as the line terminator;
            # a bare CR inside a command could hide a second command from a proxy.
            return _BARE_CR
        return line[:-1]


class ContentCheck:
    """The verdict on one message's content, whatever order or packets its bytes came in.

    Counts every octet (even after another error, so the verdict does not depend on how the
    bytes were split) and keeps the most serious rule broken (see ``_DATA_ERROR_RANK``).
    """

    __slots__ = ("error", "max_size", "reason", "reject_bare", "size", "strict_limit")

    def __init__(self, max_size: int, reject_bare: bool, strict_limit: int | None) -> None:
        self.max_size = max_size
        self.reject_bare = reject_bare
        self.strict_limit = strict_limit  # longest text line without CRLF, None if not strict
        self.size = 0
        self.error: Reply | None = None
        self.reason = ""

    def count(self, chunk: bytes) -> bool:
        """Add ``chunk`` to the size; True while the content is still good to pass on."""
        self.size += len(chunk)
        if self.size > self.max_size:
            self.fail(replies.MESSAGE_TOO_BIG, "message too big")
        return self.error is None

    def fail(self, reply: Reply, reason: str) -> None:
        rank = _DATA_ERROR_RANK[reason]
        if self.error is None or rank < _DATA_ERROR_RANK[self.reason]:
            self.error = reply
            self.reason = reason

    def check_lines(self, content: bytes, line_length: int) -> None:
        """Bare CR/LF, NUL and (in strict mode) line-length rules for a run of DATA bytes.

        ``content`` is a run of complete lines, or the start of one long line whose first
        ``line_length`` octets were already checked. The bare CR/LF and NUL rules judge every
        octet the same way whatever the line length: only the length rule is optional.
        """
        # One split serves all three rules (the profile showed separate scans to cost more
        # than the rest of the DATA path): once every CRLF is gone, any CR or LF left is bare.
        lines = content.split(b"\r\n")
        rest = b"".join(lines) if len(lines) > 1 else content
        if self.reject_bare and (b"\r" in rest or b"\n" in rest):
            self.fail(replies.BARE_LINE_ENDING, "bare CR or LF in data")
        if b"\x00" in rest:
            self.fail(_NUL_IN_DATA, "NUL in data")
        limit = self.strict_limit
        if limit is None:
            return
        # RFC 5321 §4.5.3.1.6: a text line is at most 1000 octets with its CRLF.
        if line_length + len(lines[0]) > limit or (
            len(content) > limit and max(map(len, lines)) > limit
        ):
            self.fail(replies.DATA_LINE_TOO_LONG, "line too long")


class DataReader:
    """DATA content (RFC 5321 §4.5.2): dot-unstuffed runs of lines, then ``END_OF_DATA``.

    Content is passed on a run of complete lines at a time (never byte by byte); only the
    tail after the last CRLF waits in the buffer, at most ``hold`` octets of it (a longer
    line is checked and passed on as it comes). Every run is judged by ``check``.
    """

    __slots__ = ("_at_line_start", "_line_length", "check", "done", "hold")

    def __init__(self, check: ContentCheck, hold: int) -> None:
        self.check = check
        self.hold = hold
        self.done = False  # the end marker was read: what follows is not this message's
        self._at_line_start = True
        self._line_length = 0

    def read(self, buf: bytearray) -> bytes | _Marker | None:
        """Content (possibly empty), ``END_OF_DATA`` once, or None for "need more".

        The content before the terminator and the terminator itself come from two calls;
        after the terminator the reader reads nothing more.
        """
        if not buf or self.done:
            return None
        if self._at_line_start and buf[:3] == b".\r\n":
            del buf[:3]
            self.done = True
            return END_OF_DATA
        found = buf.find(_DATA_END)
        if found >= 0:
            end = found + 2  # keep the CRLF that ends the last line; the ".CRLF" is next
        else:
            last = buf.rfind(b"\r\n")
            if last < 0:
                return self._long_line(buf)
            end = last + 2
        content = bytes(buf[:end])
        del buf[:end]
        self.check.check_lines(content, self._line_length)
        # Dot-unstuffing: drop the first dot of each line that starts with one.
        if self._at_line_start and content[:1] == b".":
            content = content[1:]
        content = content.replace(b"\r\n.", b"\r\n")
        # A run always ends with CRLF here, so the next octet starts a line.
        self._at_line_start = True
        self._line_length = 0
        return content

    def _long_line(self, buf: bytearray) -> bytes | None:
        if len(buf) <= self.hold:
            return None
        # One long line: check and pass on what is dropped exactly as if the line had come
        # whole, and keep only a possible CR of a coming CRLF.
        dropped = bytes(buf[:-1])
        self.check.check_lines(dropped, self._line_length)
        if self._at_line_start and dropped[:1] == b".":
            dropped = dropped[1:]
        self._line_length += len(buf) - 1
        self._at_line_start = False
        del buf[:-1]
        return dropped


class BdatReader:
    """The octets of one BDAT chunk (RFC 3030 §2): exactly ``size`` of them, in pieces."""

    __slots__ = ("last", "remaining")

    def __init__(self, size: int, last: bool) -> None:
        self.remaining = size
        self.last = last

    @property
    def done(self) -> bool:
        return not self.remaining

    def read(self, buf: bytearray) -> bytes | None:
        """The next piece of the chunk, or None when the buffer is empty or the chunk is done."""
        if not self.remaining or not buf:
            return None
        take = min(len(buf), self.remaining)
        chunk = bytes(buf[:take])
        del buf[:take]
        self.remaining -= take
        return chunk
