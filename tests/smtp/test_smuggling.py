"""SMTP smuggling (SEC Consult, Timo Longin, 2023): a bare CR or LF is never an end of data.

An outbound server that passes a malformed end-of-data through lets an attacker append a
second, forged transaction that a lenient receiver would run. Mailwarden ends DATA only at
``<CRLF>.<CRLF>`` (RFC 5321 §4.1.1.4) and, by default, refuses a message holding a bare CR or
LF (RFC 5321 §2.3.8) with a 5xx; with ``bare_line_endings=KEEP`` such bytes stay data.

Vectors: those of the issue, the SEC Consult research and the public checkers
(smtpsmug by Hanno Böck, smtp_smuggling_checker), plus NUL variants.
"""

from __future__ import annotations

import pytest

from mailwarden.smtp import events
from mailwarden.smtp.protocol import BareLineEndings, ProtocolSettings

from .conftest import Driver
from .helpers import ENVELOPE, Transcript, completed, drive

VECTORS = [
    b"\n.\n",
    b"\n.\r\n",
    b"\r.\n",
    b"\r\n.\n",
    b"\r\n.\r",
    b"\r\n\x00.\r\n",
    b"\r\n.\r\r\n",
    b"\r.\r",
    b"\n.\r",
    b"\r.\r\n",
    b"\n\n.\r\n",
    b"\r\n\x00.\r",
    b"\r\n\x00.\n",
    b"\r\n.\x00\r\n",
    b"\r\n\r\n.\n",
    b"\r\n.\n\r\n",
]
WITH_NUL = {v for v in VECTORS if b"\x00" in v}

LEGIT = b"From: <a@example.org>\r\nSubject: legit\r\n\r\nHello"
SMUGGLED = (
    b"MAIL FROM:<ceo@victim.example>\r\n"
    b"RCPT TO:<target@example.net>\r\n"
    b"DATA\r\n"
    b"From: <ceo@victim.example>\r\n\r\nsmuggled\r\n"
)
REAL_END = b".\r\n"
KEEP = ProtocolSettings(bare_line_endings=BareLineEndings.KEEP)


def attack(vector: bytes, *, first_line: bool = False) -> bytes:
    """A message whose content "ends" with ``vector``, followed by a forged transaction."""
    content = vector.lstrip(b"\r\n") if first_line else LEGIT + vector
    return ENVELOPE + b"DATA\r\n" + content + SMUGGLED


def senders(t: Transcript) -> list[str]:
    return [str(e.path.address) for e in t.of(events.MailFrom)]  # type: ignore[attr-defined]


def assert_nothing_smuggled(t: Transcript) -> None:
    assert senders(t) == ["a@example.org"]
    assert [str(e.path.address) for e in t.of(events.RcptTo)] == ["b@example.net"]  # type: ignore[attr-defined]
    assert len(t.of(events.MessageStart)) == 1
    assert t.codes.count(354) == 1


@pytest.mark.parametrize("vector", VECTORS, ids=repr)
def test_vector_never_ends_the_message(smtp: Driver, vector: bytes) -> None:
    for settings in (ProtocolSettings(), KEEP):
        t = smtp(attack(vector), settings=settings)
        assert t.codes == [220, 250, 250, 250, 354]  # still reading data: no reply at all
        assert_nothing_smuggled(t)
        assert not t.of(events.MessageComplete) and not t.of(events.MessageAborted)


@pytest.mark.parametrize("vector", VECTORS, ids=repr)
def test_vector_is_rejected_by_default(smtp: Driver, vector: bytes) -> None:
    t = smtp(attack(vector) + REAL_END + b"QUIT\r\n")
    assert t.codes == [220, 250, 250, 250, 354, 550, 221]
    outside_crlf = vector.replace(b"\r\n", b"")
    bare = b"\r" in outside_crlf or b"\n" in outside_crlf
    # Both faults are 550 5.6.0; a bare line ending is named first when both are present.
    assert t.replies[5].lines[0].startswith("5.6.0 ")
    assert ("Bare CR or LF" if bare else "NUL character") in t.replies[5].text
    assert completed(t) == 0
    assert len(t.of(events.MessageAborted)) == 1
    assert_nothing_smuggled(t)


@pytest.mark.parametrize("vector", [v for v in VECTORS if v not in WITH_NUL], ids=repr)
def test_vector_is_data_when_bare_line_endings_are_kept(smtp: Driver, vector: bytes) -> None:
    t = smtp(attack(vector) + REAL_END + b"QUIT\r\n", settings=KEEP)
    assert t.codes == [220, 250, 250, 250, 354, 250, 221]
    assert completed(t) == 1
    assert b"MAIL FROM:<ceo@victim.example>\r\n" in t.data
    assert t.data.startswith(LEGIT) and t.data.endswith(b"smuggled\r\n")
    assert_nothing_smuggled(t)


@pytest.mark.parametrize("vector", sorted(WITH_NUL), ids=repr)
def test_nul_vectors_are_rejected_even_when_keeping_bare_line_endings(
    smtp: Driver, vector: bytes
) -> None:
    t = smtp(attack(vector) + REAL_END, settings=KEEP)
    assert t.codes[-1] == 550 and "NUL" in t.replies[-1].text
    assert completed(t) == 0
    assert_nothing_smuggled(t)


@pytest.mark.parametrize("vector", [b".\n", b".\r", b".\r\r\n", b"\x00.\r\n"], ids=repr)
def test_vector_as_the_first_line_of_data(smtp: Driver, vector: bytes) -> None:
    t = smtp(attack(vector, first_line=True) + REAL_END)
    assert t.codes == [220, 250, 250, 250, 354, 550]
    assert_nothing_smuggled(t)


def test_dot_without_line_end_is_just_a_stuffed_line(smtp: Driver) -> None:
    """``\\r\\n.`` followed by text is a dot-stuffed line (RFC 5321 §4.5.2): legal, kept as
    data, and it ends nothing."""
    for settings in (ProtocolSettings(), KEEP):
        t = smtp(attack(b"\r\n.") + REAL_END, settings=settings)
        assert t.codes == [220, 250, 250, 250, 354, 250]
        assert b"\r\nMAIL FROM:<ceo@victim.example>\r\n" in t.data
        assert_nothing_smuggled(t)


def test_pipelined_commands_after_a_rejected_message_still_run(smtp: Driver) -> None:
    """The rejection costs the message, not the session: the client may try again."""
    t = smtp(attack(b"\n.\n") + REAL_END + ENVELOPE[len(b"EHLO client.example\r\n") :])
    assert t.codes == [220, 250, 250, 250, 354, 550, 250, 250]


# --- long lines: accepted by default, but a bare CR or LF in or around one is judged the same --

LONG = b"L" * 5_000
STRICT = ProtocolSettings(strict_line_length=True)


def long_line_attacks(vector: bytes) -> dict[str, bytes]:
    """The vector after, inside and before a 5,000-octet line, then a forged transaction."""
    start = ENVELOPE + b"DATA\r\n" + LEGIT
    return {
        "after": start + b"\r\n" + LONG + vector + SMUGGLED,
        "inside": start + b"\r\n" + LONG + vector + LONG + b"\r\n" + SMUGGLED,
        "before": start + vector + LONG + b"\r\n" + SMUGGLED,
    }


@pytest.mark.parametrize("place", ["after", "inside", "before"])
@pytest.mark.parametrize("vector", VECTORS, ids=repr)
def test_vector_with_a_long_line_never_ends_the_message(
    smtp: Driver, vector: bytes, place: str
) -> None:
    for settings in (ProtocolSettings(), KEEP, STRICT):
        t = smtp(long_line_attacks(vector)[place], settings=settings)
        assert t.codes == [220, 250, 250, 250, 354]
        assert_nothing_smuggled(t)
        assert not t.of(events.MessageComplete) and not t.of(events.MessageAborted)


@pytest.mark.parametrize("place", ["after", "inside", "before"])
@pytest.mark.parametrize("vector", VECTORS, ids=repr)
def test_vector_with_a_long_line_is_rejected_by_default_and_in_strict_mode(
    smtp: Driver, vector: bytes, place: str
) -> None:
    # Strict mode finds a line too long as well; the smuggling verdict is the one reported.
    for settings in (ProtocolSettings(), STRICT):
        t = smtp(long_line_attacks(vector)[place] + REAL_END + b"QUIT\r\n", settings=settings)
        assert t.codes == [220, 250, 250, 250, 354, 550, 221]
        assert t.replies[5].lines[0].startswith("5.6.0 ")
        assert completed(t) == 0
        assert_nothing_smuggled(t)


@pytest.mark.parametrize("vector", [v for v in VECTORS if v not in WITH_NUL], ids=repr)
def test_vector_with_a_long_line_is_data_when_kept(smtp: Driver, vector: bytes) -> None:
    message = long_line_attacks(vector)["inside"]
    t = smtp(message + REAL_END, settings=KEEP)
    assert t.codes[-1] == 250 and completed(t) == 1
    assert LONG + vector.replace(b"\r\n.", b"\r\n") + LONG in t.data
    assert_nothing_smuggled(t)


@pytest.mark.parametrize("line", [b"x" * 5_000 + b"\n" + b"y" * 5_000, b"x" * 2_500 + b"\r"])
def test_bare_line_ending_inside_a_long_line_is_refused(smtp: Driver, line: bytes) -> None:
    t = smtp(ENVELOPE + b"DATA\r\n" + line + b"\r\n" + REAL_END)
    assert t.codes[-1] == 550 and "Bare CR or LF" in t.replies[-1].text
    assert completed(t) == 0


def test_end_of_data_straddling_chunks_after_a_long_line() -> None:
    """The real CRLF.CRLF after a long line ends the message wherever the stream is cut:
    inside the terminator, at the hold size of the core, or just before the line's end."""
    prefix = ENVELOPE + b"DATA\r\n"
    body = b"Subject: s\r\n\r\n" + LONG
    script = prefix + body + b"\r\n.\r\n" + b"MAIL FROM:<c@example.org>\r\n"
    end = len(prefix) + len(body)
    start = len(prefix)
    cut_points = [*range(end - 3, end + 6), start + 999, start + 1000, start + 1001, end - 999]
    for cut in cut_points:
        for cuts in ([cut], [cut, cut + 1], [cut, cut + 2], [start + 1000, cut]):
            t = drive(script, chunking=cuts)
            assert t.codes == [220, 250, 250, 250, 354, 250, 250], cuts
            assert t.data == body + b"\r\n"
            assert senders(t) == ["a@example.org", "c@example.org"]


@pytest.mark.parametrize("vector", [b"\n.\n", b"\r.\r", b"\r\n.\n", b"\n.\r\n", b"\r\n.\r"])
def test_smuggling_vector_straddling_chunks_after_a_long_line(vector: bytes) -> None:
    """A fake terminator after a long line, cut at every offset inside it, never ends DATA."""
    script = long_line_attacks(vector)["after"]
    at = script.index(LONG) + len(LONG)
    for cut in range(at - 2, at + len(vector) + 2):
        t = drive(script + REAL_END, chunking=[cut, cut + 1])
        assert t.codes == [220, 250, 250, 250, 354, 550], cut
        assert_nothing_smuggled(t)
