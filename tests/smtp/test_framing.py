"""The framing readers alone, fed one byte at a time (and whole): units out, nothing lost."""

from __future__ import annotations

import pytest

from mailwarden.smtp import replies
from mailwarden.smtp.framing import (
    END_OF_DATA,
    BdatReader,
    CommandLineReader,
    ContentCheck,
    DataReader,
)

Feed = list[bytes]


def _feeds(data: bytes) -> list[Feed]:
    return [[data], [data[i : i + 1] for i in range(len(data))]]


def _run(reader: object, pieces: Feed, buf: bytearray | None = None) -> tuple[list, bytearray]:
    """Feed ``pieces`` into a buffer, reading every unit after each piece."""
    buf = bytearray() if buf is None else buf
    out: list = []
    for piece in pieces:
        buf += piece
        while (unit := reader.read(buf)) is not None:  # type: ignore[attr-defined]
            out.append(unit)
    return out, buf


# --- command lines --------------------------------------------------------------------------


@pytest.mark.parametrize("feed", ["whole", "bytewise"])
def test_command_lines_come_out_without_crlf(feed: str) -> None:
    data = b"EHLO c.example\r\nNOOP\r\nMAIL FROM:<a@b"
    pieces = _feeds(data)[feed == "bytewise"]
    lines, rest = _run(CommandLineReader(512), pieces)
    assert lines == [b"EHLO c.example", b"NOOP"]
    assert rest == b"MAIL FROM:<a@b"  # the incomplete line waits


@pytest.mark.parametrize("feed", ["whole", "bytewise"])
def test_overlong_line_is_answered_once_and_memory_stays_bounded(feed: str) -> None:
    data = b"X" * 5000 + b"\r\nNOOP\r\n"
    reader = CommandLineReader(100)
    buf = bytearray()
    out: list = []
    for piece in _feeds(data)[feed == "bytewise"]:
        buf += piece
        while (unit := reader.read(buf)) is not None:
            out.append(unit)
        assert len(buf) <= 101 or feed == "whole"
    assert out == [replies.LINE_TOO_LONG, b"NOOP"]


@pytest.mark.parametrize("feed", ["whole", "bytewise"])
def test_bare_lf_and_bare_cr_in_commands_are_refused(feed: str) -> None:
    data = b"NOOP\nRSET\rQUIT\r\nHELP\r\n"
    lines, _ = _run(CommandLineReader(512), _feeds(data)[feed == "bytewise"])
    assert [getattr(x, "code", x) for x in lines] == [501, 501, b"HELP"]
    assert "Bare LF" in lines[0].text and "Bare CR" in lines[1].text


# --- DATA -----------------------------------------------------------------------------------


def _check(**options: object) -> ContentCheck:
    defaults: dict = {"max_size": 10_000, "reject_bare": True, "strict_limit": None}
    defaults.update(options)
    return ContentCheck(**defaults)


@pytest.mark.parametrize("feed", ["whole", "bytewise"])
def test_data_is_unstuffed_and_ends_at_the_dot_line(feed: str) -> None:
    data = b"Subject: x\r\n\r\n..leading dot\r\n.\r\nQUIT\r\n"
    check = _check()
    units, rest = _run(DataReader(check, 1000), _feeds(data)[feed == "bytewise"])
    assert units[-1] is END_OF_DATA and units.count(END_OF_DATA) == 1
    assert b"".join(units[:-1]) == b"Subject: x\r\n\r\n.leading dot\r\n"
    assert bytes(rest) == b"QUIT\r\n"  # the reader stops at the end of the message
    assert check.error is None


def test_data_lines_are_passed_on_whole_not_byte_by_byte() -> None:
    units, _ = _run(DataReader(_check(), 1000), [b"a\r\nb\r\nc", b"\r\n.\r\n"])
    assert units == [b"a\r\nb\r\n", b"c\r\n", END_OF_DATA]


def test_empty_message_is_just_the_end() -> None:
    units, _ = _run(DataReader(_check(), 1000), [b".\r\n"])
    assert units == [END_OF_DATA]


@pytest.mark.parametrize("feed", ["whole", "bytewise"])
def test_bare_lf_in_data_is_never_an_end_and_fails_the_check(feed: str) -> None:
    data = b"a\n.\nb\r\n.\r\n"
    check = _check()
    units, _ = _run(DataReader(check, 1000), _feeds(data)[feed == "bytewise"])
    assert units.count(END_OF_DATA) == 1 and units[-1] is END_OF_DATA
    assert check.error is replies.BARE_LINE_ENDING


def test_a_long_line_is_held_only_up_to_the_hold() -> None:
    reader = DataReader(_check(), 50)
    buf = bytearray()
    seen = []
    for _ in range(400):
        buf += b"x"
        while (unit := reader.read(buf)) is not None:
            seen.append(unit)
        assert len(buf) <= 51
    buf += b"\r\n.\r\n"
    while (unit := reader.read(buf)) is not None:
        seen.append(unit)
    assert b"".join(u for u in seen if u is not END_OF_DATA) == b"x" * 400 + b"\r\n"
    assert seen[-1] is END_OF_DATA


def test_strict_line_length_and_size_and_nul() -> None:
    strict = _check(strict_limit=10)
    _run(DataReader(strict, 1000), [b"0123456789A\r\n.\r\n"])
    assert strict.error is replies.DATA_LINE_TOO_LONG
    small = _check(max_size=5)
    units, _ = _run(DataReader(small, 1000), [b"0123456789\r\n.\r\n"])
    assert small.count(units[0]) is False and small.error is replies.MESSAGE_TOO_BIG
    nul = _check()
    _run(DataReader(nul, 1000), [b"a\x00b\r\n.\r\n"])
    assert nul.reason == "NUL in data"


# --- BDAT -----------------------------------------------------------------------------------


@pytest.mark.parametrize("feed", ["whole", "bytewise"])
def test_bdat_reads_exactly_its_size(feed: str) -> None:
    data = b"hel\r\n.\r\nlo" + b"MAIL FROM:<a@b>\r\n"
    reader = BdatReader(10, last=False)
    pieces, rest = _run(reader, _feeds(data)[feed == "bytewise"])
    assert b"".join(pieces) == b"hel\r\n.\r\nlo"  # no unstuffing, no end marker
    assert reader.done and not reader.last
    assert bytes(rest) == b"MAIL FROM:<a@b>\r\n"


def test_bdat_zero_is_done_at_once() -> None:
    reader = BdatReader(0, last=True)
    assert reader.done and reader.read(bytearray(b"x")) is None
