"""The shared reply parser (RFC 5321 §4.2): any split of the bytes, the same replies."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailwarden.smtp.reply_parser import MAX_LINE, ReplyError, ReplyParser, ServerReply


def parse(data: bytes, sizes: list[int] | None = None) -> list[ServerReply]:
    """Feed ``data`` in pieces of ``sizes`` (cycled), or whole."""
    parser = ReplyParser()
    if not sizes:
        return parser.feed(data)
    out: list[ServerReply] = []
    position, index = 0, 0
    while position < len(data):
        size = sizes[index % len(sizes)]
        out += parser.feed(data[position : position + size])
        position, index = position + size, index + 1
    return out


def bytewise(data: bytes) -> list[ServerReply]:
    return parse(data, [1])


EHLO = (
    b"250-mx.example.net greets you\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n"
    b"250-8BITMIME\r\n250 CHUNKING\r\n"
)


@pytest.mark.parametrize("feed", [parse, bytewise], ids=["whole", "bytewise"])
def test_multiline_reply_and_its_parts(feed) -> None:
    (reply,) = feed(EHLO)
    assert reply.code == 250
    assert reply.raw == EHLO
    assert reply.lines == (
        "mx.example.net greets you",
        "PIPELINING",
        "SIZE 10240000",
        "8BITMIME",
        "CHUNKING",
    )
    assert reply.enhanced is None


@pytest.mark.parametrize("feed", [parse, bytewise], ids=["whole", "bytewise"])
def test_enhanced_status_code_and_bare_lf(feed) -> None:
    data = b"550-5.1.1 no such user\n550 5.1.1 try again\n451 4.7.1 later\r\n250 2.0.0\r\n"
    first, second, third = feed(data)
    assert (first.code, first.enhanced) == (550, "5.1.1")
    assert first.lines == ("no such user", "try again")
    assert (second.code, second.enhanced, second.text) == (451, "4.7.1", "later")
    assert (third.enhanced, third.lines) == ("2.0.0", ("",))
    assert first.is_permanent and second.is_transient and third.is_positive


def test_enhanced_code_whose_class_differs_from_the_reply_is_text() -> None:
    (reply,) = parse(b"250 5.1.1 odd\r\n")
    assert reply.enhanced is None
    assert reply.text == "5.1.1 odd"


def test_bare_code_and_non_ascii_text() -> None:
    first, second = parse(b"250\r\n550 Empf\xc3\xa4nger \xff unbekannt\r\n")
    assert (first.code, first.lines) == (250, ("",))
    assert second.text == "Empfänger \ufffd unbekannt"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"hello there\r\n", "not an SMTP reply line"),
        (b"25\r\n", "not an SMTP reply line"),
        (b" 25 x\r\n", "not an SMTP reply line"),
        (b"250-first\r\n251 second\r\n", "reply code changed"),
        (b"250x\r\n", "no space or '-'"),
    ],
)
def test_garbage_is_an_error_that_keeps_earlier_replies(data: bytes, message: str) -> None:
    with pytest.raises(ReplyError, match=message) as caught:
        parse(b"220 ready\r\n" + data)
    assert [r.code for r in caught.value.complete] == [220]


def test_a_line_without_end_cannot_grow_the_buffer_without_bound() -> None:
    parser = ReplyParser()
    parser.feed(b"250-" + b"x" * 1000)
    with pytest.raises(ReplyError, match="too long"):
        for _ in range(MAX_LINE // 1000 + 1):
            parser.feed(b"x" * 1000)
    with pytest.raises(ReplyError):
        parser.feed(b"250 ok\r\n")  # out of step for good


def test_a_complete_but_over_long_line_and_reply_are_errors() -> None:
    with pytest.raises(ReplyError, match="too long"):
        parse(b"250 " + b"x" * MAX_LINE + b"\r\n")
    parser = ReplyParser(max_reply=100)
    with pytest.raises(ReplyError, match="reply too long"):
        parser.feed(b"250-" + b"x" * 60 + b"\r\n" + b"250-" + b"x" * 60 + b"\r\n")


def test_eof_inside_a_reply() -> None:
    parser = ReplyParser()
    parser.feed(b"250-more to come\r\n250 ")
    with pytest.raises(ReplyError, match="closed inside a reply"):
        parser.eof()
    ReplyParser().eof()  # nothing pending: fine


_text = st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
_reply = st.tuples(
    st.integers(200, 599),
    st.lists(_text, min_size=1, max_size=5),
    st.sampled_from([b"\r\n", b"\n"]),
)


def _encode(code: int, texts: list[bytes], end: bytes) -> bytes:
    lines = [b"%d-%s" % (code, t) for t in texts[:-1]] + [b"%d %s" % (code, texts[-1])]
    return b"".join(line + end for line in lines)


@given(st.lists(_reply, min_size=1, max_size=6), st.lists(st.integers(1, 50), min_size=1))
def test_any_split_gives_the_same_replies(replies, sizes) -> None:
    data = b"".join(_encode(*r) for r in replies)
    whole = parse(data)
    assert [r.code for r in whole] == [code for code, _, _ in replies]
    assert b"".join(r.raw for r in whole) == data
    assert parse(data, sizes) == whole
    assert bytewise(data) == whole


def _outcome(data: bytes, sizes: list[int] | None) -> tuple[list[ServerReply], bool]:
    """The replies handed out before any error, and whether an error came."""
    parser = ReplyParser()
    out: list[ServerReply] = []
    pieces = [data] if not sizes else []
    position, index = 0, 0
    while sizes and position < len(data):
        size = sizes[index % len(sizes)]
        pieces.append(data[position : position + size])
        position, index = position + size, index + 1
    try:
        for piece in pieces:
            out += parser.feed(piece)
    except ReplyError as error:
        return out + list(error.complete), True
    return out, False


_line = st.one_of(
    st.builds(
        _encode, st.integers(0, 999), st.lists(_text, min_size=1, max_size=3), st.just(b"\r\n")
    ),
    st.binary(max_size=12),
)


@given(st.lists(_line, max_size=6), st.lists(st.integers(1, 20), min_size=1))
def test_any_split_of_any_bytes_gives_the_same_outcome(pieces, sizes) -> None:
    data = b"".join(pieces)
    assert _outcome(data, sizes) == _outcome(data, None) == _outcome(data, [1])
