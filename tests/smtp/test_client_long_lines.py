"""Lines over 998 octets on the way out, broken as Postfix's smtp_line_length_limit does: CRLF
after 998 octets, the rest continued after one SPACE, every piece at most 998 octets."""

from __future__ import annotations

import pytest

from mailwarden.smtp.client import (
    TIMEOUTS,
    Envelope,
    MessageTooLarge,
    Timeouts,
    fold_long_lines,
)

from .client_helpers import ClientRun


def wire_lines(data: bytes) -> list[bytes]:
    assert data.endswith(b"\r\n.\r\n")
    return data[: -len(b".\r\n")].split(b"\r\n")[:-1]


@pytest.mark.parametrize("mode", ["whole", "bytewise"])
def test_a_5000_octet_line_goes_out_in_pieces_of_998(mode: str) -> None:
    run = ClientRun(mode)  # type: ignore[arg-type]
    run.ready(b"250-mx\r\n250 PIPELINING\r\n")
    line = (bytes(range(33, 127)) * 54)[:5000]  # no spaces of its own
    assert len(line) == 5000
    run.conn.send_message(Envelope("s@x.org", ["a@x.net"]), b"Subject: t\r\n\r\n" + line + b"\r\n")
    run.sent()
    run.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
    lines = wire_lines(run.sent())
    body = lines[2:]
    # 998, then four of SPACE + 997, then SPACE + the 14 octets left: 998 + 4 * 997 + 14.
    assert [len(piece) for piece in body] == [998, 998, 998, 998, 998, 15]
    assert all(piece.startswith(b" ") for piece in body[1:])
    assert body[0] + b"".join(piece[1:] for piece in body[1:]) == line


def test_a_line_of_exactly_998_octets_is_left_alone() -> None:
    message = b"x" * 998 + b"\r\n" + b"y" * 10 + b"\r\n"
    assert fold_long_lines(message) is message
    assert fold_long_lines(b"x" * 999 + b"\r\n") == b"x" * 998 + b"\r\n x\r\n"
    # SPACE + 997 fills a continuation piece exactly; nothing more follows it.
    assert fold_long_lines(b"z" * 1995 + b"\r\n") == b"z" * 998 + b"\r\n " + b"z" * 997 + b"\r\n"


def test_a_long_line_starting_with_a_dot_is_stuffed_once() -> None:
    run = ClientRun("whole")
    run.ready(b"250-mx\r\n250 PIPELINING\r\n")
    line = b"." + b"d" * 1500
    run.conn.send_message(Envelope("s@x.org", ["a@x.net"]), line + b"\r\n")
    run.sent()
    run.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
    # The duplicated dot is not counted (RFC 5321 §4.5.3.1.6), as in Postfix.
    assert wire_lines(run.sent()) == [b"." + line[:998], b" " + line[998:]]


def test_bdat_and_size_carry_the_broken_lines() -> None:
    run = ClientRun("whole")
    run.ready(b"250-mx\r\n250-PIPELINING\r\n250-SIZE 100000\r\n250 CHUNKING\r\n")
    run.conn.send_message(Envelope("s@x.org", ["a@x.net"]), b"q" * 2000 + b"\r\n")
    sent = b"q" * 998 + b"\r\n " + b"q" * 997 + b"\r\n " + b"q" * 5 + b"\r\n"
    assert run.sent().startswith(b"MAIL FROM:<s@x.org> SIZE=%d\r\n" % len(sent))
    run.server(b"250 ok\r\n250 ok\r\n")
    assert run.sent() == b"BDAT %d LAST\r\n" % len(sent) + sent


def test_size_is_checked_after_breaking() -> None:
    run = ClientRun("whole")
    run.ready(b"250-mx\r\n250 SIZE 1003\r\n")
    # 1,001 octets + CRLF fit in 1,003; broken, they are 1,006 (two CRLFs and a space more).
    with pytest.raises(MessageTooLarge) as caught:
        run.conn.send_message(Envelope("s@x.org", ["a@x.net"]), b"w" * 1001 + b"\r\n")
    assert caught.value.size == 1006


def test_limit_zero_sends_lines_as_they_are() -> None:
    run = ClientRun("whole", line_length_limit=0)  # type: ignore[arg-type]
    run.ready(b"250-mx\r\n250 PIPELINING\r\n")
    run.conn.send_message(Envelope("s@x.org", ["a@x.net"]), b"v" * 3000 + b"\r\n")
    run.sent()
    run.server(b"250 ok\r\n250 ok\r\n354 go\r\n")
    assert wire_lines(run.sent()) == [b"v" * 3000]


def test_the_timeouts_given_are_the_ones_applied() -> None:
    short = Timeouts(greeting=1.0, mail=2.0, rcpt=3.0, data_start=4.0, data_end=6.0, command=7.0)
    run = ClientRun("whole", timeouts=short)  # type: ignore[arg-type]
    assert run.conn.current_timeout() == 1.0 != TIMEOUTS.greeting
    assert run.conn.awaiting == "greeting"
    run.ready(b"250 mx\r\n")
    run.conn.send_message(Envelope("s@x.org", ["a@x.net"]), b"x\r\n")
    assert run.conn.current_timeout() == 2.0 and run.conn.awaiting == "mail"
    run.server(b"250 ok\r\n")
    assert run.conn.current_timeout() == 3.0
    run.server(b"250 ok\r\n")
    assert run.conn.current_timeout() == 4.0
    run.server(b"354 go\r\n")
    assert (run.conn.current_timeout(), run.conn.awaiting) == (6.0, "data_end")
