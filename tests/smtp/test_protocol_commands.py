"""Session-level commands, sequencing, limits and input hygiene (RFC 5321 §3-4)."""

from __future__ import annotations

import pytest

from mailwarden.smtp import events, replies
from mailwarden.smtp.events import Event
from mailwarden.smtp.protocol import (
    AWAITING_REPLY,
    CLOSED,
    Paused,
    ProtocolSettings,
    SmtpConnection,
)

from .conftest import Driver
from .helpers import ENVELOPE, GREETING, answer, one_message, parse_replies, session

DEFAULT_KEYWORDS = [
    "PIPELINING",
    "SIZE 52428800",
    "8BITMIME",
    "SMTPUTF8",
    "ENHANCEDSTATUSCODES",
    "CHUNKING",
    "DSN",
]


def ehlo_keywords(transcript_output: bytes) -> list[str]:
    ehlo = [r for r in parse_replies(transcript_output) if r.code == 250 and len(r.lines) > 1]
    assert ehlo, "no EHLO reply"
    return list(ehlo[-1].lines[1:])


# --- greeting, EHLO, HELO ------------------------------------------------------------------


def test_ehlo_reports_name_and_lists_extensions(smtp: Driver) -> None:
    t = smtp(session("EHLO client.example"))
    assert t.codes == [220, 250]
    assert t.events == [events.Helo("client.example", extended=True)]
    assert t.replies[1].lines[0] == "localhost greets client.example"
    assert ehlo_keywords(t.output) == DEFAULT_KEYWORDS
    assert t.conn.helo_name == "client.example" and t.conn.extended


def test_helo_is_one_line_without_extensions(smtp: Driver) -> None:
    t = smtp(session("helo client.example"))
    assert t.codes == [220, 250]
    assert t.replies[1].lines == ("localhost",)
    assert t.events == [events.Helo("client.example", extended=False)]


def test_ehlo_accepts_address_literals(smtp: Driver) -> None:
    t = smtp(session("EHLO [192.0.2.1]", "EHLO [IPv6:2001:db8::1]"))
    assert t.codes == [220, 250, 250]


@pytest.mark.parametrize(
    ("line", "text"),
    [
        ("EHLO", "EHLO requires a domain"),
        ("HELO ", "HELO requires a domain"),
        ("EHLO bad_name!", "Invalid domain"),
        ("EHLO two words", "Invalid domain"),
        ("EHLO [300.1.1.1]", "Invalid domain"),
    ],
)
def test_bad_helo_arguments(smtp: Driver, line: str, text: str) -> None:
    t = smtp(session(line, "MAIL FROM:<a@example.org>"))
    assert t.codes == [220, 501, 503]
    assert text in t.replies[1].text
    assert t.events == []


def test_ehlo_keywords_follow_tls_and_auth_settings(smtp: Driver) -> None:
    from .helpers import TLS

    settings = ProtocolSettings(tls_available=True)
    t = smtp(
        session("EHLO c.example", "STARTTLS"), TLS, session("EHLO c.example"), settings=settings
    )
    first, after_tls = (r for r in t.replies if r.code == 250)
    assert "STARTTLS" in first.lines and not any(k.startswith("AUTH") for k in first.lines)
    assert "STARTTLS" not in after_tls.lines and "AUTH PLAIN LOGIN" in after_tls.lines

    plain = smtp(session("EHLO c.example"), settings=ProtocolSettings(auth_requires_tls=False))
    assert ehlo_keywords(plain.output) == [*DEFAULT_KEYWORDS, "AUTH PLAIN LOGIN"]

    none = ProtocolSettings(auth_requires_tls=False, auth_mechanisms=(), max_message_size=1000)
    keywords = ehlo_keywords(smtp(session("EHLO c.example"), settings=none).output)
    assert "SIZE 1000" in keywords and not any(k.startswith("AUTH") for k in keywords)


def test_refused_ehlo_leaves_the_session_without_helo(smtp: Driver) -> None:
    refuse = answer(lambda e: replies.SCRIPT_REJECT if isinstance(e, events.Helo) else None)
    t = smtp(session("EHLO c.example", "MAIL FROM:<a@example.org>"), decide=refuse)
    assert t.codes == [220, 550, 503]
    assert t.replies[2].lines == ("5.5.1 Send HELO or EHLO first",)


def test_accepted_second_ehlo_resets_the_transaction(smtp: Driver) -> None:
    t = smtp(ENVELOPE + session("EHLO again.example", "RCPT TO:<c@example.net>", "DATA"))
    assert t.codes == [220, 250, 250, 250, 250, 503, 503]
    assert t.kinds()[-2:] == ["Helo", "TransactionReset"]


def test_refused_second_ehlo_keeps_the_transaction(smtp: Driver) -> None:
    """RFC 5321 §4.1.4: only an *acceptable* EHLO resets the state as RSET would."""

    def refuse_second(e: Event) -> replies.Reply | None:
        return replies.SCRIPT_REJECT if e == events.Helo("again.example", True) else None

    t = smtp(
        ENVELOPE + session("EHLO again.example", "RCPT TO:<c@example.net>"),
        decide=answer(refuse_second),
    )
    assert t.codes == [220, 250, 250, 250, 550, 250]
    assert not t.of(events.TransactionReset)
    assert t.conn.recipient_count == 2


# --- sequencing (RFC 5321 §4.1.4, 503) -----------------------------------------------------


@pytest.mark.parametrize(
    ("commands", "codes"),
    [
        (["MAIL FROM:<a@example.org>"], [503]),
        (["RCPT TO:<a@example.org>"], [503]),
        (["DATA"], [503]),
        (["EHLO c.example", "RCPT TO:<a@example.org>"], [250, 503]),
        (["EHLO c.example", "DATA"], [250, 503]),
        (
            ["EHLO c.example", "MAIL FROM:<a@example.org>", "MAIL FROM:<a@example.org>"],
            [250, 250, 503],
        ),
        (["EHLO c.example", "MAIL FROM:<a@example.org>", "DATA"], [250, 250, 554]),
        (["EHLO c.example", "BDAT 0 LAST"], [250, 503]),
    ],
)
def test_commands_out_of_sequence(smtp: Driver, commands: list[str], codes: list[int]) -> None:
    t = smtp(session(*commands, "NOOP"))
    assert t.codes == [220, *codes, 250]
    assert "5.5.1" in t.replies[len(codes)].text
    assert not t.of(events.MessageStart)


# --- RSET NOOP HELP QUIT VRFY --------------------------------------------------------------


def test_rset_ends_the_transaction(smtp: Driver) -> None:
    t = smtp(ENVELOPE + session("RSET", "RCPT TO:<b@example.net>", "RSET", "RSET x"))
    assert t.codes == [220, 250, 250, 250, 250, 503, 250, 501]
    assert len(t.of(events.TransactionReset)) == 1  # the idle RSET has nothing to reset
    assert t.conn.helo_name == "client.example"  # RSET keeps the EHLO


def test_noop_and_help(smtp: Driver) -> None:
    t = smtp(session("NOOP", "noop anything", "HELP", "HELP MAIL"))
    assert t.codes == [220, 250, 250, 214, 214]
    assert len(t.replies[3].lines) == 2 and "EHLO" in t.replies[3].lines[0]
    assert t.events == []


def test_quit_closes_and_ignores_the_rest(smtp: Driver) -> None:
    t = smtp(session("EHLO c.example", "QUIT", "NOOP", "MAIL FROM:<a@example.org>"))
    assert t.codes == [220, 250, 221]
    assert t.events[-1] == events.ConnectionClosing("client quit")
    assert t.conn.closed and t.conn.next_event() is CLOSED
    t.conn.receive_data(b"NOOP\r\n")
    assert t.conn.data_to_send() == b""


def test_quit_with_argument_is_a_syntax_error(smtp: Driver) -> None:
    assert smtp(session("QUIT now", "QUIT")).codes == [220, 501, 221]


def test_vrfy_is_252_unless_the_script_answers(smtp: Driver) -> None:
    t = smtp(session("VRFY postmaster", "VRFY"))
    assert t.codes == [220, 252, 501]
    assert t.events == [events.Vrfy("postmaster")]
    known = answer(lambda e: replies.Reply(250, "2.1.5", "<postmaster@example.net>"))
    assert smtp(session("VRFY postmaster"), decide=known).codes == [220, 250]


def test_unknown_commands_are_500_and_case_is_ignored(smtp: Driver) -> None:
    t = smtp(session("EXPN list", "TURN", "ehlo c.example", "mail from:<a@example.org>"))
    assert t.codes == [220, 500, 500, 250, 250]
    assert t.replies[1].lines == ("5.5.1 Command unrecognized",)


# --- errors cap, early talker, refusing greeting -------------------------------------------


def test_too_many_errors_then_421_and_close(smtp: Driver) -> None:
    t = smtp(session("BAD1", "BAD2", "BAD3", "NOOP"), settings=ProtocolSettings(max_errors=3))
    assert t.codes == [220, 500, 500, 500, 421]
    assert t.replies[-1].lines == ("4.7.0 Too many errors, closing connection",)
    assert t.events == [events.ConnectionClosing("too many errors")]


def test_too_many_recipients_is_not_counted_as_an_error(smtp: Driver) -> None:
    settings = ProtocolSettings(max_errors=2, max_recipients=1)
    rcpts = [f"RCPT TO:<r{i}@example.net>" for i in range(4)]
    t = smtp(ENVELOPE + session(*rcpts, "NOOP"), settings=settings)
    assert t.codes == [220, 250, 250, 250, 452, 452, 452, 452, 250]


def test_early_talker_gets_554_and_is_disconnected(smtp: Driver) -> None:
    t = smtp(session("NOOP"), before_greeting=session("EHLO c.example"))
    assert t.codes == [554]
    assert t.replies[0].lines == ("5.5.0 Protocol violation: you talked before the greeting",)
    assert t.kinds() == ["ConnectionClosing"]


def test_early_talk_is_buffered_when_allowed(smtp: Driver) -> None:
    settings = ProtocolSettings(reject_early_talkers=False)
    t = smtp(session("NOOP"), before_greeting=session("EHLO c.example"), settings=settings)
    assert t.codes == [220, 250, 250]
    assert t.events == [events.Helo("c.example", True)]


def test_554_greeting_answers_503_until_quit(smtp: Driver) -> None:
    refusal = replies.Reply(554, "5.7.1", "No service for you")
    t = smtp(
        session("EHLO c.example", "MAIL FROM:<a@example.org>", "NOOP", "quit"), greeting=refusal
    )
    assert t.codes == [554, 503, 503, 503, 221]
    assert t.kinds() == ["ConnectionClosing"]


def test_421_greeting_closes(smtp: Driver) -> None:
    t = smtp(session("EHLO c.example"), greeting=replies.TOO_MANY_CONNECTIONS)
    assert t.codes == [421]
    assert t.conn.closed and t.kinds() == ["ConnectionClosing"]


def test_greeting_after_the_client_left_is_harmless() -> None:
    conn = SmtpConnection(ProtocolSettings())
    conn.receive_data(b"")
    conn.send_greeting(GREETING)
    assert conn.data_to_send() == b""
    assert conn.next_event() == events.ConnectionClosing("client closed the connection")


def test_calls_out_of_turn_are_caller_bugs() -> None:
    conn = SmtpConnection(ProtocolSettings())
    with pytest.raises(RuntimeError):
        conn.accept()
    with pytest.raises(RuntimeError):
        conn.tls_established()
    conn.send_greeting(GREETING)
    with pytest.raises(RuntimeError):
        conn.send_greeting(GREETING)


# --- line limits (RFC 5321 §4.5.3.1.4) -----------------------------------------------------


def test_command_line_limit(smtp: Driver) -> None:
    exact = "NOOP " + "x" * (512 - 7)  # 512 octets with CRLF
    t = smtp(session(exact, exact + "x", "NOOP"))
    assert t.codes == [220, 250, 500, 250]
    assert t.replies[2].lines == ("5.5.2 Line too long",)


def test_mail_and_rcpt_get_a_parameter_allowance(smtp: Driver) -> None:
    envid = "ENVID=" + "e" * 100
    padding = " " * (900 - len("MAIL FROM:<a@example.org> ") - len(envid))
    long_mail = "MAIL FROM:<a@example.org>" + padding + " " + envid
    assert 600 < len(long_mail) < 1022
    too_long = "MAIL FROM:<a@example.org>" + " " * 1000
    t = smtp(session("EHLO c.example", long_mail, "RSET", too_long))
    assert t.codes == [220, 250, 250, 250, 500]


def test_huge_line_is_answered_once_and_the_session_goes_on(smtp: Driver) -> None:
    t = smtp(b"NOOP " + b"y" * 20_000 + b"\r\n" + session("NOOP"))
    assert t.codes == [220, 500, 250]
    assert len(t.conn._inbuf) < 20_000


def test_huge_line_with_garbage_gets_the_same_answer_both_ways(smtp: Driver) -> None:
    line = b"XYZ\x00\xff" + b"z" * 13_000
    assert smtp(line + b"\r\n" + session("NOOP")).codes == [220, 500, 250]


# --- input hygiene: NUL, UTF-8, 8-bit, bare line endings -----------------------------------


def test_nul_in_a_command_is_refused_and_never_echoed(smtp: Driver) -> None:
    t = smtp(b"EHLO c\x00.example\r\n" + session("NOOP"))
    assert t.codes == [220, 500, 250]
    assert t.replies[1].lines == ("5.5.2 NUL character not allowed in commands",)
    assert b"\x00" not in t.output


def test_invalid_utf8_is_refused_and_never_echoed(smtp: Driver) -> None:
    t = smtp(b"MAIL FROM:<\xff\xfe@example.org>\r\n" + session("NOOP"))
    assert t.codes == [220, 500, 250]
    assert t.replies[1].lines == ("5.5.2 Invalid UTF-8 in command",)
    assert b"\xff" not in t.output


def test_bare_lf_and_bare_cr_in_commands(smtp: Driver) -> None:
    t = smtp(b"NOOP\n" + b"NOOP\rRSET\r\n" + session("NOOP"))
    assert t.codes == [220, 501, 501, 250]
    assert "Bare LF" in t.replies[1].text and "Bare CR" in t.replies[2].text


def test_eight_bit_envelope_needs_smtputf8(smtp: Driver) -> None:
    t = smtp(
        session(
            "EHLO c.example",
            "MAIL FROM:<josé@example.org>",
            "MAIL FROM:<josé@example.org> SMTPUTF8",
            "RCPT TO:<用户@例子.广告>",
        )
    )
    assert t.codes == [220, 250, 553, 250, 250]
    assert t.replies[2].lines == ("5.6.7 Non-ASCII address requires the SMTPUTF8 parameter",)
    assert str(t.of(events.RcptTo)[0].path.address) == "用户@例子.广告"  # type: ignore[attr-defined]


def test_eight_bit_recipient_without_smtputf8(smtp: Driver) -> None:
    t = smtp(ENVELOPE + session("RCPT TO:<josé@example.net>"))
    assert t.codes[-1] == 553


def test_smtputf8_must_be_a_parameter_not_text(smtp: Driver) -> None:
    """The word SMTPUTF8 inside a quoted local part does not turn SMTPUTF8 on."""
    t = smtp(session("EHLO c.example", 'MAIL FROM:<"x SMTPUTF8 ü"@example.org>'))
    assert t.codes == [220, 250, 553]
    assert not t.of(events.MailFrom)


def test_malformed_addresses_are_501_and_not_echoed(smtp: Driver) -> None:
    t = smtp(
        session(
            "EHLO c.example",
            "MAIL FROM:<a b@example.org>",
            "MAIL FROM:a@example.org",
            "MAIL TO:<a@example.org>",
            "MAIL FROM:<a@example.org",
        )
    )
    assert t.codes == [220, 250, 501, 501, 501, 501]
    assert b"a b@" not in t.output


def test_client_eof_mid_data_aborts_the_message(smtp: Driver) -> None:
    t = smtp(ENVELOPE + b"DATA\r\nSubject: half\r\n", eof=True)
    assert t.kinds()[-2:] == ["MessageAborted", "ConnectionClosing"]
    assert not t.of(events.MessageComplete)


def test_commands_pipelined_before_eof_are_still_answered(smtp: Driver) -> None:
    # A client may send a whole transaction and QUIT, then shut down its sending side.
    body = b"Subject: eof\r\n\r\nbye\r\n"
    t = smtp(one_message(body + b".\r\n") + session("QUIT"), eof=True)
    assert t.codes == [220, 250, 250, 250, 354, 250, 221]
    assert t.data == body


def test_eof_after_a_complete_command_closes_after_its_reply(smtp: Driver) -> None:
    t = smtp(session("EHLO c.example", "NOOP"), eof=True)
    assert t.codes == [220, 250, 250]
    assert t.kinds()[-1] == "ConnectionClosing" and t.conn.closed


def test_connection_lost_closes_at_once_and_drops_pipelined_input() -> None:
    conn = SmtpConnection(ProtocolSettings())
    conn.send_greeting(GREETING)
    conn.data_to_send()
    conn.receive_data(session("EHLO c.example", "NOOP"))
    conn.connection_lost()
    assert conn.next_event() == events.ConnectionClosing("connection lost")
    assert conn.data_to_send() == b""


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
def test_the_core_pauses_on_each_event_awaiting_a_reply(bytewise: bool) -> None:
    conn = SmtpConnection(ProtocolSettings())
    conn.send_greeting(GREETING)
    conn.data_to_send()
    stream = ENVELOPE + session("NOOP", "QUIT")
    pieces = [stream[i : i + 1] for i in range(len(stream))] if bytewise else [stream]
    seen: list[Event | Paused] = []
    for piece in pieces:
        conn.receive_data(piece)
        seen.append(conn.next_event())
        # Nothing may be answered while the EHLO waits, however many commands queue up.
        assert conn.data_to_send() == b""
    assert [e for e in seen if not isinstance(e, Paused)] == [events.Helo("client.example", True)]
    assert conn.next_event() is AWAITING_REPLY
    conn.accept()
    assert isinstance(conn.next_event(), events.MailFrom)
    assert conn.next_event() is AWAITING_REPLY
    conn.send_reply(replies.SCRIPT_REJECT)
    # RCPT after a refused MAIL: answered by the core itself, in order.
    assert conn.next_event() == events.ConnectionClosing("client quit")
    codes = [r.code for r in parse_replies(conn.data_to_send())]
    assert codes == [250, 550, 503, 250, 221]
    assert conn.next_event() is CLOSED
