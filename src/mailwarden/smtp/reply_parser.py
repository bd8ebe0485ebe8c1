"""Splitting a server's bytes into SMTP replies: the one reply parser every client shares.

Sans-I/O, like the server core: :class:`ReplyParser` is fed whatever bytes arrived, in any split,
and hands back the replies that are complete (RFC 5321 §4.2). A reply is one or more lines
``code-text`` ending with ``code text`` (or a bare ``code``); every line carries the same code
(§4.2.1). Used by the outbound client (``smtp/client.py``) and by smtpping.

What a client should tolerate, it tolerates: bare LF line ends (§4.2 asks for CRLF, but a client
loses nothing by reading LF) and any octet in the text (SMTPUTF8 servers send UTF-8, RFC 6531
§3.7.4; others send Latin-1 garbage). What it must not accept is an error
(:class:`ReplyError`): a line that does not start with three digits, a fourth octet that is
neither space nor ``-``, a code that changes inside one reply, and a line or a reply longer than
the limits, so a peer that never sends a line end cannot make the buffer grow without bound.
"""

from __future__ import annotations

import re
from typing import NamedTuple, NoReturn

from mailwarden.smtp.errors import RemoteProtocolError

# RFC 5321 §4.5.3.1.5 allows 512 octets per reply line; real servers exceed it (long EHLO AUTH
# lines, verbose 5xx texts), so the bound is generous. It must stay above smtpping's read size
# (4096), whose in-place fast path accepts any one-line reply that fits one read.
MAX_LINE = 8192
# A whole multi-line reply (an EHLO with many extensions is a few hundred octets).
MAX_REPLY = 65536

# RFC 3463 §2: class.subject.detail, the class being the reply code's first digit (RFC 2034 §4).
_ENHANCED = re.compile(rb"([245])\.(\d{1,3})\.(\d{1,3})(?=[ \r\n]|$)")
_SPACE, _DASH, _CR = 0x20, 0x2D, 0x0D
# A whole well-formed reply in one match (every line the first line's code, '-' on all but the
# last): the quick way through a multi-line reply. Anything it does not match (a reply not yet
# complete, garbage, an over-long line) is left to the line-by-line loop, which decides.
_WHOLE_REPLY = re.compile(
    rb"(\d\d\d)(?:-[^\n]{0,%d}\n\1)*(?: [^\n]{0,%d}|\r?)\n" % (MAX_LINE - 4, MAX_LINE - 4)
)


class ReplyError(RemoteProtocolError):
    """The server sent something that is not an SMTP reply.

    ``complete`` holds the replies that were whole before the bad bytes (a caller may still act
    on them); ``data`` is the offending line (cut to 200 octets).
    """

    def __init__(self, message: str, data: bytes, complete: tuple[ServerReply, ...] = ()) -> None:
        super().__init__(f"{message}: {data[:200]!r}", data=data[:200])
        self.complete = complete


class ServerReply(NamedTuple):
    """One reply as received: its code and its raw bytes (every line, line ends included).

    A tuple so that ``code, raw = reply`` costs nothing on smtpping's hot path; the text, the
    lines and the enhanced status code are parsed only when asked for.
    """

    code: int
    raw: bytes

    @property
    def enhanced(self) -> str | None:
        """The RFC 3463 enhanced status code of the first line (RFC 2034 §4), if it has one."""
        match = _ENHANCED.match(self.raw, 4, self.raw.find(b"\n"))
        if match is None or int(match[1]) != self.code // 100:
            return None
        return match[0].decode("ascii")

    @property
    def lines(self) -> tuple[str, ...]:
        """The text of each line, without code, separator, enhanced code or line end.

        Decoded as UTF-8 (RFC 6531 §3.7.4); octets that are not UTF-8 become U+FFFD.
        """
        enhanced = self.enhanced
        prefix = enhanced.encode() + b" " if enhanced else b""
        texts = []
        for line in self.raw.split(b"\n")[:-1]:
            text = line[4:].removesuffix(b"\r") if len(line) > 3 else b""
            if prefix and (text.startswith(prefix) or text == prefix[:-1]):
                text = text[len(prefix) :]
            texts.append(text.decode("utf-8", "replace"))
        return tuple(texts)

    @property
    def text(self) -> str:
        """All lines joined with a newline."""
        return "\n".join(self.lines)

    @property
    def is_positive(self) -> bool:
        return self.code < 400

    @property
    def is_transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        return self.code >= 500


# tuple.__new__ skips NamedTuple's Python-level __new__ (a measurable share of a short reply).
_new_reply = tuple.__new__


class ReplyParser:
    """Collects bytes and hands out complete replies (:class:`ServerReply`).

    ``feed(data)`` returns the replies ``data`` completed, in order; it raises
    :class:`ReplyError` when the stream is not SMTP replies, after which the parser refuses
    further input (a stream out of step cannot be trusted to get back in step).
    ``eof()`` checks that nothing was left half-received when the peer closed.
    """

    __slots__ = ("_broken", "_buffer", "_head", "_scanned", "max_line", "max_reply")

    def __init__(self, max_line: int = MAX_LINE, max_reply: int = MAX_REPLY) -> None:
        self._buffer = b""
        self._scanned = 0  # lines before this offset of the buffer were already checked
        self._head: bytes | None = None  # the code of the reply in progress, after its first line
        self._broken: ReplyError | None = None
        self.max_line = max_line
        self.max_reply = max_reply

    @property
    def empty(self) -> bool:
        """No part of a reply is waiting for the rest of its bytes."""
        return not self._buffer

    def feed(self, data: bytes) -> list[ServerReply]:
        if self._broken is not None:
            raise ReplyError("input after an earlier reply error", data)
        if not self._buffer:
            # The usual read: one whole one-line reply, "code SP text" (the loop gives the same).
            end = len(data) - 1
            if (
                3 < end <= self.max_line
                and data[3] == _SPACE
                and data.find(b"\n", 4) == end
                and data[:3].isdigit()
            ):
                return [_new_reply(ServerReply, (int(data[:3]), data))]
        buffer = self._buffer + data if self._buffer else data
        position = self._scanned
        reply_start = 0
        head = self._head
        replies: list[ServerReply] = []
        find = buffer.find
        max_line = self.max_line
        # Only over fresh input: retrying the match on a growing partial reply would be quadratic.
        whole = _WHOLE_REPLY.match if max_line == MAX_LINE and not self._buffer else None
        while True:
            if head is None and whole is not None:
                match = whole(buffer, position)
                if match is not None and match.end() - position <= self.max_reply:
                    position = match.end()
                    replies.append(
                        _new_reply(ServerReply, (int(match[1]), buffer[reply_start:position]))
                    )
                    reply_start = position
                    continue
            newline = find(b"\n", position)
            if newline < 0:
                break
            line_start, position = position, newline + 1
            length = newline - line_start
            if length > max_line:
                self._fail("reply line too long", buffer[line_start:newline], replies)
            if head is None:
                head = buffer[line_start : line_start + 3]
                # bytes.isdigit is ASCII-only; int() alone would take " 25" or "2_5".
                if length < 3 or not head.isdigit():
                    self._fail("not an SMTP reply line", buffer[line_start:newline], replies)
            elif not buffer.startswith(head, line_start):
                bad = buffer[reply_start:position]
                self._fail("reply code changed inside a reply", bad, replies)
            separator = buffer[line_start + 3] if length > 3 else _SPACE
            if separator == _DASH:
                if position - reply_start > self.max_reply:
                    self._fail("reply too long", buffer[reply_start:position], replies)
                continue
            if separator != _SPACE and not (separator == _CR and length == 4):
                bad = buffer[line_start:newline]
                self._fail("no space or '-' after the reply code", bad, replies)
            replies.append(_new_reply(ServerReply, (int(head), buffer[reply_start:position])))
            head = None
            reply_start = position
        self._head = head
        self._buffer = buffer = buffer[reply_start:] if reply_start else buffer
        self._scanned = position - reply_start
        if len(buffer) - self._scanned > self.max_line:
            self._fail("reply line too long", buffer[self._scanned :], replies)
        return replies

    def eof(self) -> None:
        """The peer closed: a reply cut short is an error."""
        if self._buffer and self._broken is None:
            self._fail("connection closed inside a reply", self._buffer, [])

    def _fail(self, message: str, data: bytes, replies: list[ServerReply]) -> NoReturn:
        self._buffer = b""
        self._head = None
        self._broken = ReplyError(message, data, tuple(replies))
        raise self._broken
