"""A driver for the sans-I/O SMTP core: bytes in, events and reply bytes out.

``drive`` feeds a client's bytes to an :class:`SmtpConnection` either whole or one byte at a
time (or in any chunking), answers each event that needs a reply with a scripted decision
(default: ``accept()``), and returns what a user would observe: the events and the bytes the
server wrote. ``drive_both`` runs the same input both ways and asserts that nothing observable
depends on how the bytes were split.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from mailwarden.smtp import events, replies
from mailwarden.smtp.events import Event
from mailwarden.smtp.protocol import Paused, ProtocolSettings, SmtpConnection
from mailwarden.smtp.replies import Reply

Decide = Callable[[SmtpConnection, Event], None]
FeedMode = Literal["whole", "bytewise"]
Chunking = FeedMode | Sequence[int]


class TlsHandshake:
    """Marker in a client script: the TLS handshake completes here (after a 220 to STARTTLS)."""


TLS = TlsHandshake()
Segment = bytes | TlsHandshake

GREETING = replies.greeting("mx.example.net")
# Bounds every pump loop: the core must make progress or pause; it may never spin.
MAX_STEPS_PER_FEED = 100_000

_REPLY_LINE = re.compile(rb"^(\d{3})([ -])(.*)$", re.DOTALL)


def accept_all(conn: SmtpConnection, event: Event) -> None:
    conn.accept()


def answer(choose: Callable[[Event], Reply | None]) -> Decide:
    """A decision from a function of the event: a Reply to send, or None to accept()."""

    def decide(conn: SmtpConnection, event: Event) -> None:
        reply = choose(event)
        if reply is None:
            conn.accept()
        else:
            conn.send_reply(reply)

    return decide


@dataclass(frozen=True)
class ParsedReply:
    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@dataclass
class Transcript:
    events: list[Event]
    output: bytes
    conn: SmtpConnection = field(repr=False)

    @property
    def replies(self) -> list[ParsedReply]:
        """The server's replies, multi-line ones joined (RFC 5321 §4.2.1)."""
        return parse_replies(self.output)

    @property
    def codes(self) -> list[int]:
        return [reply.code for reply in self.replies]

    def of(self, kind: type) -> list[Event]:
        return [event for event in self.events if isinstance(event, kind)]

    def kinds(self) -> list[str]:
        return [type(event).__name__ for event in normalized(self.events)]

    @property
    def data(self) -> bytes:
        """All message content the core passed on, concatenated."""
        return b"".join(e.data for e in self.events if isinstance(e, events.MessageData))

    @property
    def closed(self) -> bool:
        return any(isinstance(e, events.ConnectionClosing) for e in self.events)


def parse_replies(output: bytes) -> list[ParsedReply]:
    """Split server output into replies; asserts every line is a well-formed reply line."""
    assert output == b"" or output.endswith(b"\r\n"), output[-80:]
    result: list[ParsedReply] = []
    current: list[str] = []
    code: bytes | None = None
    for raw in output.split(b"\r\n")[:-1]:
        match = _REPLY_LINE.match(raw)
        assert match is not None, f"malformed reply line {raw!r}"
        assert b"\r" not in raw and b"\n" not in raw
        if code is not None:
            assert match.group(1) == code, f"code changed inside a multi-line reply: {raw!r}"
        code = match.group(1)
        current.append(match.group(3).decode("utf-8"))
        if match.group(2) == b" ":
            result.append(ParsedReply(int(code), tuple(current)))
            current, code = [], None
    assert not current, "output ends inside a multi-line reply"
    return result


def _pieces(segment: bytes, chunking: Chunking) -> Iterable[bytes]:
    if not segment:
        return  # an empty read means end of stream: never feed one by accident
    if chunking == "whole":
        yield segment
    elif chunking == "bytewise":
        for index in range(len(segment)):
            yield segment[index : index + 1]
    else:
        cuts = sorted({c for c in chunking if 0 < c < len(segment)})
        start = 0
        for cut in [*cuts, len(segment)]:
            if cut > start:
                yield segment[start:cut]
            start = cut


def pump(conn: SmtpConnection, decide: Decide, seen: list[Event]) -> None:
    """Take events until the core pauses, answering the ones that need a reply."""
    for _ in range(MAX_STEPS_PER_FEED):
        event = conn.next_event()
        if isinstance(event, Paused):
            assert event is not Paused.AWAITING_REPLY, "the driver left an event unanswered"
            return
        seen.append(event)
        if conn.awaiting is event:
            decide(conn, event)
    raise AssertionError("the core produced events without end")


def drive(
    *script: Segment,
    settings: ProtocolSettings | None = None,
    chunking: Chunking = "whole",
    decide: Decide = accept_all,
    greeting: Reply | None = GREETING,
    before_greeting: bytes = b"",
    eof: bool = False,
) -> Transcript:
    """Run a client script against a fresh core and return what the client would see.

    ``script`` is a sequence of byte strings; a ``TLS`` marker completes the TLS handshake
    (if the core is waiting for it) before the following bytes are fed.
    """
    conn = SmtpConnection(settings or ProtocolSettings())
    seen: list[Event] = []
    output = bytearray()
    for piece in _pieces(before_greeting, chunking):
        conn.receive_data(piece)
        pump(conn, decide, seen)
    if greeting is not None:
        conn.send_greeting(greeting)
    pump(conn, decide, seen)
    output += conn.data_to_send()
    for segment in script:
        if isinstance(segment, TlsHandshake):
            if conn.next_event() is Paused.AWAITING_TLS:
                conn.tls_established()
            pump(conn, decide, seen)
            continue
        for piece in _pieces(segment, chunking):
            conn.receive_data(piece)
            pump(conn, decide, seen)
            output += conn.data_to_send()
    if eof:
        conn.receive_data(b"")
        pump(conn, decide, seen)
    output += conn.data_to_send()
    return Transcript(seen, bytes(output), conn)


def normalized(seen: Sequence[Event]) -> list[Event]:
    """Events with the transport's chunking taken out.

    Adjacent MessageData are joined (how content is cut depends on packet boundaries). The
    content of an aborted or still unfinished message is dropped: the server discards it, and
    how much of it was passed on before the core saw the fault depends on packet boundaries.
    """
    out: list[Event] = []
    for event in seen:
        last = out[-1] if out else None
        if isinstance(event, events.MessageData) and isinstance(last, events.MessageData):
            out[-1] = events.MessageData(last.data + event.data)
            continue
        if isinstance(event, events.MessageAborted) and isinstance(last, events.MessageData):
            out.pop()
        out.append(event)
    if out and isinstance(out[-1], events.MessageData):
        out.pop()
    return out


def drive_both(*script: Segment, **options: object) -> tuple[Transcript, Transcript]:
    """Run ``script`` fed whole and fed one byte at a time; assert the client cannot tell."""
    whole = drive(*script, chunking="whole", **options)  # type: ignore[arg-type]
    bytewise = drive(*script, chunking="bytewise", **options)  # type: ignore[arg-type]
    assert_same(whole, bytewise)
    return whole, bytewise


def assert_same(expected: Transcript, actual: Transcript) -> None:
    assert actual.output == expected.output
    assert normalized(actual.events) == normalized(expected.events)


def session(*commands: str | bytes) -> bytes:
    """Join command lines with CRLF (str lines are encoded as UTF-8)."""
    return b"".join((c.encode() if isinstance(c, str) else c) + b"\r\n" for c in commands)


ENVELOPE = session("EHLO client.example", "MAIL FROM:<a@example.org>", "RCPT TO:<b@example.net>")


def one_message(body: bytes) -> bytes:
    """An envelope, DATA, ``body`` (which must end the data itself), and nothing else."""
    return ENVELOPE + b"DATA\r\n" + body


def completed(transcript: Transcript) -> int:
    return len(transcript.of(events.MessageComplete))
