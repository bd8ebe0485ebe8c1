"""Random and mutated command streams: the core never raises, never spins, always answers
with well-formed reply lines, and cannot tell how the bytes were split."""

from __future__ import annotations

import base64
import os
import re
import zlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailwarden.smtp import events, replies
from mailwarden.smtp.events import Event
from mailwarden.smtp.protocol import BareLineEndings, ProtocolSettings, SmtpConnection

from .helpers import TLS, Segment, Transcript, assert_same, drive, parse_replies

# Deep run: MAILWARDEN_FUZZ_EXAMPLES=20000 python -m pytest tests/smtp/test_protocol_fuzz.py
EXAMPLES = int(os.environ.get("MAILWARDEN_FUZZ_EXAMPLES", "300"))

ADDRESSES = [
    "<a@example.org>",
    "<>",
    "<Postmaster>",
    "<@hop.example:b@example.net>",
    '<"quoted local"@example.net>',
    "<josé@example.org>",
    "<b@[192.0.2.1]>",
    "<bad address>",
    "<a@b",
    "a@example.org",
]
PARAMETERS = [
    "",
    " SIZE=100",
    " SIZE=99999999999",
    " SIZE=²",
    " BODY=8BITMIME",
    " SMTPUTF8",
    " RET=HDRS ENVID=x+2B",
    " AUTH=<>",
    " NOTIFY=SUCCESS,DELAY ORCPT=rfc822;a+40b",
    " FOO=bar",
    " SIZE=1 SIZE=2",
]
WORDS = [
    "EHLO client.example",
    "HELO client.example",
    "EHLO",
    "EHLO bad_name!",
    "RSET",
    "NOOP",
    "HELP",
    "VRFY someone",
    "VRFY",
    "DATA",
    "DATA x",
    "STARTTLS",
    "AUTH PLAIN",
    "AUTH LOGIN",
    "AUTH PLAIN " + base64.b64encode(b"\x00u\x00p").decode(),
    "AUTH PLAIN ====",
    "AUTH XOAUTH",
    "*",
    "dXNlcg==",
    "BDAT",
    "BDAT x",
    "BDAT 0 LAST",
    "QUIT",
    ".",
    "..",
    "Subject: fuzz",
    "",
    "EXPN list",
]
ENDINGS = [b"\r\n"] * 30 + [b"\n", b"\r", b"", b"\r\r\n", b"\n\r"]
BODY_LINES = [b"Subject: fuzz", b"", b"body text", b".", b"..", b".hidden", b"x" * 30, b"\x00"]


def ended(text: bytes) -> st.SearchStrategy[bytes]:
    return st.sampled_from(ENDINGS).map(lambda ending: text + ending)


@st.composite
def command_lines(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 22))
    if kind <= 7:
        verb = ["MAIL FROM:", "RCPT TO:", "RCPT TO:", "mail from: "][kind % 4]
        address = draw(st.sampled_from(ADDRESSES[:4] * 3 + ADDRESSES))
        line = verb + address + draw(st.sampled_from(PARAMETERS[:1] * 6 + PARAMETERS))
        return draw(ended(line.encode()))
    if kind <= 9:  # a message body, ended properly or not
        lines = draw(st.lists(st.sampled_from(BODY_LINES), max_size=6))
        body = b"".join([draw(ended(line)) for line in lines])
        return b"DATA\r\n" + body + draw(st.sampled_from([b".\r\n", b".\r\n", b".\n", b""]))
    if kind <= 15:
        return draw(ended(draw(st.sampled_from(WORDS)).encode()))
    if kind == 16:
        size = draw(st.integers(0, 40))
        last = draw(st.booleans())
        payload = draw(st.binary(min_size=0, max_size=size + 3))  # the count may be wrong
        return b"BDAT %d%s\r\n" % (size, b" LAST" if last else b"") + payload
    if kind == 17:
        return draw(ended(draw(st.binary(max_size=40))))
    if kind == 18:
        filler = draw(st.sampled_from([b"x", b"\x00", b"\xff", b".", b" "]))
        size = draw(st.sampled_from([500, 600, 1000, 1100, 12300]))
        return draw(ended(b"NOOP " + filler * size))
    return b"EHLO client.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n"


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    start = draw(st.sampled_from([b"EHLO client.example\r\n"] * 4 + [b""]))
    stream = start + b"".join(draw(st.lists(command_lines(), max_size=25)))
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2, 4]))):  # flip, insert or delete a byte
        if not stream:
            break
        at = draw(st.integers(0, len(stream) - 1))
        op = draw(st.integers(0, 2))
        byte = bytes([draw(st.sampled_from([0, 10, 13, 46, 32, 0xFF, 65]))])
        if op == 0:
            stream = stream[:at] + byte + stream[at + 1 :]
        elif op == 1:
            stream = stream[:at] + byte + stream[at:]
        else:
            stream = stream[:at] + stream[at + 1 :]
    return stream


protocol_settings = st.builds(
    ProtocolSettings,
    max_errors=st.sampled_from([5, 20, 100]),
    max_recipients=st.sampled_from([1, 2, 1000]),
    max_message_size=st.sampled_from([30, 1000, 50_000_000]),
    max_text_line=st.sampled_from([40, 1000]),
    strict_line_length=st.booleans(),
    bare_line_endings=st.sampled_from(list(BareLineEndings)),
    reject_early_talkers=st.booleans(),
    tls_available=st.booleans(),
    auth_requires_tls=st.booleans(),
    max_auth_failures=st.sampled_from([1, 3]),
)


def decider(seed: int):  # type: ignore[no-untyped-def]
    """A deterministic 'policy': its answer depends only on the event and the seed."""

    def decide(conn: SmtpConnection, event: Event) -> None:
        choice = (zlib.crc32(repr(event).encode()) ^ seed) % 12
        if isinstance(event, events.AuthRequest | events.AuthResponse) and choice < 2:
            conn.send_auth_challenge(b"challenge")
        elif choice == 0:
            conn.send_reply(replies.SCRIPT_REJECT)
        elif choice == 1:
            conn.send_reply(replies.SCRIPT_DEFER.with_text("later\r\n250 injected"))
        elif choice == 2 and seed % 5 == 0:
            conn.send_reply(replies.SERVICE_SHUTTING_DOWN, disconnect=True)
        elif isinstance(event, events.AuthRequest | events.AuthResponse) and choice == 3:
            conn.send_reply(replies.AUTH_FAILED)
        else:
            conn.accept()

    return decide


_LINE = re.compile(rb"\A(\d{3})[ -][\x20-\x7e]*\Z")


def assert_well_formed(t: Transcript) -> None:
    parsed = parse_replies(t.output)
    for raw in t.output.split(b"\r\n")[:-1]:
        match = _LINE.match(raw)
        assert match, f"reply line with raw or control bytes: {raw!r}"
        assert len(raw) + 2 <= 512  # RFC 5321 §4.5.3.1.5
    for reply in parsed:
        assert reply.code // 100 in (2, 4, 5) or reply.code in (334, 354), reply
    closings = [i for i, e in enumerate(t.events) if isinstance(e, events.ConnectionClosing)]
    assert len(closings) <= 1
    if closings:
        assert closings[0] == len(t.events) - 1, "events after ConnectionClosing"


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    stream=streams(),
    early=st.sampled_from([b""] * 7 + [b"EHLO early.example\r\n"]),
    tls_at=st.sampled_from([None, None, None, 30, 200, 1000]),
    config=protocol_settings,
    seed=st.integers(0, 2**32 - 1),
    cuts=st.lists(st.integers(0, 3000), max_size=12),
)
def test_random_streams(
    stream: bytes,
    early: bytes,
    tls_at: int | None,
    config: ProtocolSettings,
    seed: int,
    cuts: list[int],
) -> None:
    script: list[Segment] = [stream]
    if tls_at is not None:
        script = [stream[:tls_at], TLS, stream[tls_at:]]
    options = {"settings": config, "decide": decider(seed), "before_greeting": early}
    whole = drive(*script, chunking="whole", **options)  # type: ignore[arg-type]
    assert_well_formed(whole)
    assert_same(whole, drive(*script, chunking="bytewise", **options))  # type: ignore[arg-type]
    assert_same(whole, drive(*script, chunking=cuts, **options))  # type: ignore[arg-type]
    eof = drive(*script, chunking=cuts, eof=True, **options)  # type: ignore[arg-type]
    assert_well_formed(eof)
    assert isinstance(eof.events[-1], events.ConnectionClosing)


@settings(max_examples=max(EXAMPLES // 3, 50), deadline=None)
@given(data=st.binary(max_size=3000), config=protocol_settings)
def test_random_bytes_in_data_and_bdat(data: bytes, config: ProtocolSettings) -> None:
    envelope = b"EHLO c.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n"
    for stream in (
        envelope + b"DATA\r\n" + data + b"\r\n.\r\nNOOP\r\n",
        envelope + b"BDAT %d LAST\r\n" % len(data) + data + b"NOOP\r\n",
    ):
        whole = drive(stream, settings=config)
        assert_well_formed(whole)
        assert_same(whole, drive(stream, settings=config, chunking="bytewise"))
        if not whole.closed:
            # Whatever the content, the message ended where the protocol says, and the
            # session is back to reading commands.
            assert whole.codes[-1] == 250
            ended = whole.of(events.MessageComplete) + whole.of(events.MessageAborted)
            assert len(ended) == 1


def test_reply_well_formedness_check_catches_injection() -> None:
    """The checker itself: a raw CR/LF in reply text would be caught."""
    forged = Transcript([], b"250 ok\r\n250 2.0.0 a\rb\r\n", SmtpConnection(ProtocolSettings()))
    try:
        assert_well_formed(forged)
    except AssertionError:
        return
    raise AssertionError("a bare CR inside a reply line went unnoticed")
