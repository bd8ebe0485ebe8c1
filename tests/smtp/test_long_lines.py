"""Long lines in DATA and BDAT (RFC 5321 §4.5.3.1): accepted by default, streamed in bounded
memory, refused only in strict mode; the message size limit applies either way.

Smuggling with long lines is in test_smuggling.py.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailwarden.smtp import events
from mailwarden.smtp.protocol import ProtocolSettings, SmtpConnection

from .conftest import Driver
from .helpers import ENVELOPE, GREETING, accept_all, completed, drive, one_message, pump, session

STRICT = ProtocolSettings(strict_line_length=True)


def stuffed(lines: list[bytes]) -> bytes:
    """``lines`` as DATA content on the wire: dot-stuffed (RFC 5321 §4.5.2), CRLF each."""
    return b"".join((b"." + line if line[:1] == b"." else line) + b"\r\n" for line in lines)


def stored(lines: list[bytes]) -> bytes:
    return b"".join(line + b"\r\n" for line in lines)


@pytest.mark.parametrize("length", [998, 999, 1000, 1001, 5_000, 20_000, 1_000_000])
def test_a_line_of_any_length_is_accepted_byte_for_byte(length: int) -> None:
    lines = [b"Subject: long", b"", b"x" * length, b"." + b"y" * length, b"end"]
    t = drive(one_message(stuffed(lines) + b".\r\n") + session("QUIT"))
    assert t.codes == [220, 250, 250, 250, 354, 250, 221]
    assert t.data == stored(lines)


def test_a_long_line_is_accepted_fed_one_byte_at_a_time(smtp: Driver) -> None:
    lines = [b"a" * 5_000, b"." * 3_000, b"b" * 1_001]
    t = smtp(one_message(stuffed(lines) + b".\r\n"))
    assert t.codes[-1] == 250 and completed(t) == 1
    assert t.data == stored(lines)


@pytest.mark.parametrize("strict", [False, True], ids=["default", "strict"])
def test_a_long_line_is_streamed_not_buffered(strict: bool) -> None:
    """The core never holds a whole long line: at most 1000 octets of it wait for their end,
    even with text_line raised far above that."""
    conn = SmtpConnection(ProtocolSettings(strict_line_length=strict, max_text_line=10**7))
    seen: list[events.Event] = []
    conn.send_greeting(GREETING)
    for piece in (ENVELOPE, b"DATA\r\n"):
        conn.receive_data(piece)
        pump(conn, accept_all, seen)
    passed_on = 0
    for _ in range(64):
        conn.receive_data(b"q" * 65_536)
        pump(conn, accept_all, seen)
        assert conn.buffered_bytes <= 1000
        data = b"".join(e.data for e in seen if isinstance(e, events.MessageData))
        assert len(data) > passed_on  # passed on as it comes, not at the line's end
        passed_on = len(data)
    conn.receive_data(b"\r\n.\r\n")
    pump(conn, accept_all, seen)
    assert any(isinstance(e, events.MessageComplete) for e in seen)
    assert b"".join(e.data for e in seen if isinstance(e, events.MessageData)) == (
        b"q" * 65_536 * 64 + b"\r\n"
    )


def test_strict_mode_refuses_a_long_line_and_keeps_the_session(smtp: Driver) -> None:
    t = smtp(one_message(b"x" * 20_000 + b"\r\n.\r\n") + session("NOOP"), settings=STRICT)
    assert t.codes == [220, 250, 250, 250, 354, 500, 250]
    assert t.replies[5].lines == ("5.5.2 Line too long in message data",)
    assert t.of(events.MessageAborted) == [events.MessageAborted("line too long")]
    assert completed(t) == 0


def test_strict_mode_uses_the_configured_text_line(smtp: Driver) -> None:
    strict_2000 = ProtocolSettings(strict_line_length=True, max_text_line=2000)
    ok = smtp(one_message(b"x" * 1998 + b"\r\n.\r\n"), settings=strict_2000)
    assert ok.codes[-1] == 250
    too_long = smtp(one_message(b"x" * 1999 + b"\r\n.\r\n"), settings=strict_2000)
    assert too_long.codes[-1] == 500


def test_message_size_limit_still_applies_to_one_long_line(smtp: Driver) -> None:
    limited = ProtocolSettings(max_message_size=10_000)
    t = smtp(one_message(b"x" * 20_000 + b"\r\n.\r\n") + session("NOOP"), settings=limited)
    assert t.codes[-2:] == [552, 250]
    assert t.replies[-2].lines == ("5.3.4 Message size exceeds fixed maximum message size",)
    assert completed(t) == 0


@pytest.mark.parametrize("settings", [ProtocolSettings(), STRICT], ids=["default", "strict"])
def test_bdat_chunks_with_long_lines_are_accepted(smtp: Driver, settings: ProtocolSettings) -> None:
    """BDAT content is counted octets with no line structure (RFC 3030 §2): never judged by
    line length, in either mode."""
    first = b"Subject: bdat\r\n\r\n" + b"x" * 15_000
    second = b"y" * 15_000 + b"\r\n"
    script = ENVELOPE + b"BDAT %d\r\n" % len(first) + first
    script += b"BDAT %d LAST\r\n" % len(second) + second
    t = smtp(script, settings=settings)
    assert t.codes[-2:] == [250, 250]
    assert completed(t) == 1
    assert t.data == first + second


def test_command_lines_keep_their_limit() -> None:
    """Only message text is freed: a command line is still 512 octets (+ extension room)."""
    t = drive(session("EHLO client.example", "NOOP " + "x" * 1100, "NOOP"))
    assert t.codes == [220, 250, 500, 250]
    assert t.replies[2].lines == ("5.5.2 Line too long",)


# Lines around the hold size and far beyond it, some starting with a dot (stuffed on the wire).
body_line = st.one_of(
    st.integers(0, 3_000).map(lambda n: b"l" * n),
    st.integers(995, 1_005).map(lambda n: b"m" * n),
    st.integers(0, 2_000).map(lambda n: b"." + b"d" * n),
    st.text(alphabet="ab .\t", max_size=40).map(str.encode),
)


@settings(max_examples=150, deadline=None)
@given(
    lines=st.lists(body_line, min_size=1, max_size=8),
    cuts=st.lists(st.integers(0, 30_000), max_size=12),
    strict=st.booleans(),
)
def test_stored_body_equals_sent_body_for_any_line_lengths_and_splits(
    lines: list[bytes], cuts: list[int], strict: bool
) -> None:
    """However long its lines and however the stream is cut, what the core passes on is the
    sent body (unstuffed) exactly; strict mode refuses exactly the bodies with a line over
    998 octets (1000 with CRLF)."""
    script = one_message(stuffed(lines) + b".\r\n") + session("NOOP")
    offset = len(ENVELOPE) + len(b"DATA\r\n")
    t = drive(
        script,
        chunking=[offset + cut for cut in cuts],
        settings=ProtocolSettings(strict_line_length=strict),
    )
    wire_lengths = [len(line) + (line[:1] == b".") for line in lines]
    if strict and max(wire_lengths) > 998:
        assert t.codes[-2:] == [500, 250]
        assert completed(t) == 0
    else:
        assert t.codes[-2:] == [250, 250]
        assert t.data == stored(lines)
