"""Mail transactions: MAIL/RCPT parameters, DATA, BDAT, limits and PIPELINING."""

from __future__ import annotations

import pytest

from mailwarden.smtp import events, replies
from mailwarden.smtp.events import Event
from mailwarden.smtp.protocol import ProtocolSettings

from .conftest import Driver
from .helpers import ENVELOPE, answer, completed, one_message, session

MAIL = "MAIL FROM:<a@example.org>"


def mail_with(params: str) -> bytes:
    return session("EHLO c.example", f"{MAIL} {params}")


# --- a whole transaction -------------------------------------------------------------------


def test_a_message_goes_through(smtp: Driver) -> None:
    body = b"Subject: hi\r\n\r\nHello\r\n"
    t = smtp(one_message(body + b".\r\n") + session("QUIT"))
    assert t.codes == [220, 250, 250, 250, 354, 250, 221]
    assert t.replies[4].lines == ("End data with <CR><LF>.<CR><LF>",)
    assert t.replies[5].lines == ("2.0.0 Message queued",)
    assert t.kinds() == [
        "Helo",
        "MailFrom",
        "RcptTo",
        "MessageStart",
        "MessageData",
        "MessageComplete",
        "ConnectionClosing",
    ]
    assert t.of(events.MessageStart) == [events.MessageStart(chunking=False)]
    assert t.data == body
    assert not t.conn.in_transaction  # a new transaction may start


def test_dot_unstuffing(smtp: Driver) -> None:
    """RFC 5321 §4.5.2: the first dot of a line that starts with one is removed."""
    stuffed = b"..leading\r\nmid.dle\r\n..\r\n...\r\n.x\r\n"
    t = smtp(one_message(stuffed + b".\r\n"))
    assert t.data == b".leading\r\nmid.dle\r\n.\r\n..\r\nx\r\n"
    assert completed(t) == 1


def test_empty_message(smtp: Driver) -> None:
    t = smtp(one_message(b".\r\n"))
    assert t.data == b"" and completed(t) == 1


def test_policy_refusals_at_each_step(smtp: Driver) -> None:
    def decide(event: Event) -> replies.Reply | None:
        if isinstance(event, events.RcptTo) and event.path.address.local_part == "nobody":
            return replies.Reply(550, "5.1.1", "No such user")
        if isinstance(event, events.MessageComplete):
            return replies.SCRIPT_DEFER
        return None

    t = smtp(
        session(
            "EHLO c.example",
            MAIL,
            "RCPT TO:<nobody@example.net>",
            "DATA",
            "RCPT TO:<b@example.net>",
            "DATA",
        )
        + b"x\r\n.\r\n"
        + session("RCPT TO:<b@example.net>"),
        decide=answer(decide),
    )
    # DATA with no accepted recipient: 554 (RFC 5321 §3.3); a deferred message ends the
    # transaction, so the last RCPT needs a new MAIL.
    assert t.codes == [220, 250, 250, 550, 554, 250, 354, 451, 503]


# --- MAIL parameters -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        "SIZE=1000",
        "size=52428800",
        "BODY=8BITMIME",
        "BODY=7bit",
        "SMTPUTF8",
        "RET=FULL",
        "RET=hdrs",
        "ENVID=QQ314159+2B",
        "AUTH=<>",
        "AUTH=user+40example.org",
        "SIZE=10 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=x AUTH=<>",
    ],
)
def test_supported_mail_parameters(smtp: Driver, params: str) -> None:
    t = smtp(mail_with(params))
    assert t.codes == [220, 250, 250]
    (event,) = t.of(events.MailFrom)
    for item in params.split():
        key, _, value = item.partition("=")
        assert event.path.parameters[key.upper()] == (value or None)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("params", "code", "enhanced"),
    [
        ("SIZE=52428801", 552, "5.3.4"),
        ("SIZE=99999999999999999999", 552, "5.3.4"),
        ("SIZE=123456789012345678901", 501, "5.5.4"),
        ("SIZE", 501, "5.5.4"),
        ("SIZE=ten", 501, "5.5.4"),
        ("SIZE=-1", 501, "5.5.4"),
        ("BODY=BINARYMIME", 555, "5.5.4"),
        ("BODY", 555, "5.5.4"),
        ("SMTPUTF8=yes", 501, "5.5.4"),
        ("RET=ALL", 501, "5.5.4"),
        ("ENVID=" + "x" * 101, 501, "5.5.4"),
        ("ENVID=a+zz", 501, "5.5.4"),
        ("AUTH", 501, "5.5.4"),
        ("FOO=bar", 555, "5.5.4"),
        ("NOTIFY=NEVER", 555, "5.5.4"),
        ("SIZE=1 size=2", 501, "5.5.4"),
        ("SIZE=1=2", 501, "5.5.4"),
    ],
)
def test_refused_mail_parameters(smtp: Driver, params: str, code: int, enhanced: str) -> None:
    t = smtp(mail_with(params) + session("RCPT TO:<b@example.net>"))
    assert t.codes == [220, 250, code, 503]
    assert t.replies[2].lines[0].startswith(enhanced + " ")
    assert not t.of(events.MailFrom)


def test_size_with_non_ascii_digits_is_a_syntax_error_not_a_crash(smtp: Driver) -> None:
    t = smtp(session("EHLO c.example", "MAIL FROM:<a@example.org> SIZE=² SMTPUTF8"))
    assert t.codes == [220, 250, 501]


def test_unknown_parameter_name_is_quoted_safely(smtp: Driver) -> None:
    t = smtp(mail_with("X-" + "Y" * 60 + "=1"))
    assert t.codes[-1] == 555
    assert len(t.replies[-1].text) < 80


# --- RCPT parameters and limits ------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    ["NOTIFY=SUCCESS,FAILURE", "notify=delay", "NOTIFY=NEVER", "ORCPT=rfc822;b+40example.net"],
)
def test_supported_rcpt_parameters(smtp: Driver, params: str) -> None:
    t = smtp(session("EHLO c.example", MAIL, f"RCPT TO:<b@example.net> {params}"))
    assert t.codes == [220, 250, 250, 250]
    key, _, value = params.partition("=")
    (event,) = t.of(events.RcptTo)
    assert event.path.parameters == {key.upper(): value}  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ("NOTIFY=NEVER,SUCCESS", 501),
        ("NOTIFY=ALWAYS", 501),
        ("NOTIFY", 501),
        ("ORCPT=rfc822", 501),
        ("ORCPT=;x", 501),
        ("ORCPT=rfc822;a+4", 501),
        ("SIZE=10", 555),
    ],
)
def test_refused_rcpt_parameters(smtp: Driver, params: str, code: int) -> None:
    t = smtp(session("EHLO c.example", MAIL, f"RCPT TO:<b@example.net> {params}", "DATA"))
    assert t.codes == [220, 250, 250, code, 554]


def test_postmaster_without_domain_is_a_recipient(smtp: Driver) -> None:
    t = smtp(session("EHLO c.example", "MAIL FROM:<>", "RCPT TO:<Postmaster>"))
    assert t.codes == [220, 250, 250, 250]
    assert t.of(events.MailFrom)[0].path.address.is_null  # type: ignore[attr-defined]
    assert t.of(events.RcptTo)[0].path.address.is_postmaster  # type: ignore[attr-defined]


def test_null_recipient_is_refused(smtp: Driver) -> None:
    assert smtp(session("EHLO c.example", MAIL, "RCPT TO:<>")).codes[-1] == 501


def test_source_route_is_accepted_and_ignored(smtp: Driver) -> None:
    t = smtp(session("EHLO c.example", MAIL, "RCPT TO:<@relay.example,@hop.example:b@example.net>"))
    assert t.codes[-1] == 250
    assert str(t.of(events.RcptTo)[0].path.address) == "b@example.net"  # type: ignore[attr-defined]


def test_max_recipients_452_per_extra_earlier_ones_kept(smtp: Driver) -> None:
    rcpts = [f"RCPT TO:<r{i}@example.net>" for i in range(5)]
    refuse_r0 = answer(
        lambda e: (
            replies.Reply(550, "5.1.1", "No such user")
            if isinstance(e, events.RcptTo) and e.path.address.local_part == "r0"
            else None
        )
    )
    t = smtp(
        session("EHLO c.example", MAIL, *rcpts, "DATA") + b"body\r\n.\r\n",
        settings=ProtocolSettings(max_recipients=2),
        decide=refuse_r0,
    )
    # A refused recipient does not use up the allowance; past it, 452 4.5.3 each.
    assert t.codes == [220, 250, 250, 550, 250, 250, 452, 452, 354, 250]
    assert t.replies[6].lines == ("4.5.3 Too many recipients",)
    assert len(t.of(events.RcptTo)) == 3
    assert completed(t) == 1


# --- DATA limits ---------------------------------------------------------------------------


def test_oversized_message_gets_552_at_the_end_and_nothing_else(smtp: Driver) -> None:
    body = b"".join(b"line %03d of the message\r\n" % i for i in range(20))
    t = smtp(
        one_message(body + b".\r\n") + session(MAIL),
        settings=ProtocolSettings(max_message_size=100),
    )
    assert t.codes == [220, 250, 250, 250, 354, 552, 250]
    assert t.replies[5].lines == ("5.3.4 Message size exceeds fixed maximum message size",)
    assert t.of(events.MessageAborted) == [events.MessageAborted("message too big")]
    assert completed(t) == 0


def test_message_exactly_at_the_size_limit_is_accepted(smtp: Driver) -> None:
    body = b"x" * 98 + b"\r\n"
    t = smtp(one_message(body + b".\r\n"), settings=ProtocolSettings(max_message_size=100))
    assert completed(t) == 1 and t.codes[-1] == 250


STRICT = ProtocolSettings(strict_line_length=True)


def test_text_line_limit_in_strict_mode(smtp: Driver) -> None:
    """RFC 5321 §4.5.3.1.6: 1000 octets with the CRLF, enforced when the listener opts in."""
    ok = b"a" * 998 + b"\r\n"
    t = smtp(one_message(ok + b".\r\n") + b"DATA\r\n", settings=STRICT)
    assert completed(t) == 1
    t = smtp(
        one_message(ok + b"b" * 999 + b"\r\n" + ok + b".\r\n") + session("NOOP"), settings=STRICT
    )
    assert t.codes == [220, 250, 250, 250, 354, 500, 250]
    assert t.replies[5].lines == ("5.5.2 Line too long in message data",)
    assert completed(t) == 0


def test_line_over_1000_octets_is_accepted_by_default(smtp: Driver) -> None:
    """RFC 5321 §4.5.3.1: avoid the limit where possible; real senders exceed it."""
    body = b"a" * 998 + b"\r\n" + b"b" * 999 + b"\r\n" + b"c" * 20_000 + b"\r\n"
    t = smtp(one_message(body + b".\r\n") + session("NOOP"))
    assert t.codes == [220, 250, 250, 250, 354, 250, 250]
    assert completed(t) == 1
    assert t.data == body


@pytest.mark.parametrize("settings", [ProtocolSettings(), STRICT], ids=["default", "strict"])
@pytest.mark.parametrize(
    "body",
    [
        b"a" * 500 + b"\n" + b"a" * 600 + b"\r\n",  # bare LF inside what is one long line
        b"b" * 1500 + b"\r\nshort\nline\r\n",  # long line first, bare LF later
        b"c" * 1500 + b"\x00\r\nx\ry\r\n",  # long line, NUL, bare CR
    ],
)
def test_several_faults_get_one_answer_however_the_bytes_arrive(
    smtp: Driver, body: bytes, settings: ProtocolSettings
) -> None:
    """The most serious fault is reported (smuggling first), not the first one a particular
    packet split happened to reveal; byte-by-byte mode also compares with whole."""
    t = smtp(one_message(body + b".\r\n"), settings=settings)
    assert t.codes[-1] == 550
    assert "Bare CR or LF" in t.replies[-1].text


def test_enormous_line_does_not_pile_up_in_strict_mode(smtp: Driver) -> None:
    t = smtp(one_message(b"z" * 100_000 + b"\r\n.\r\n") + session("NOOP"), settings=STRICT)
    assert t.codes[-2:] == [500, 250]
    assert len(t.conn._inbuf) == 0


def test_nul_in_data_is_refused(smtp: Driver) -> None:
    t = smtp(one_message(b"a\x00b\r\n.\r\n"))
    assert t.codes[-1] == 550
    assert "NUL" in t.replies[-1].text
    assert completed(t) == 0


# --- PIPELINING (RFC 2920) -----------------------------------------------------------------


def test_pipelined_transactions_reply_in_order(smtp: Driver) -> None:
    def refuse_bad(event: Event) -> replies.Reply | None:
        if isinstance(event, events.RcptTo) and event.path.address.local_part == "bad":
            return replies.Reply(550, "5.1.1", "No such user")
        return None

    stream = (
        session("EHLO c.example", MAIL, "RCPT TO:<bad@example.net>", "RCPT TO:<b@example.net>")
        + b"DATA\r\none\r\n.\r\n"
        + session("MAIL FROM:<>", "RCPT TO:<bad@example.net>", "DATA", "NOOP")
        + session(MAIL, "RSET", "MAIL FROM:<c@example.org>", "RCPT TO:<b@example.net>")
        + b"DATA\r\ntwo\r\n.\r\nQUIT\r\n"
    )
    t = smtp(stream, decide=answer(refuse_bad))
    assert t.codes[:11] == [220, 250, 250, 550, 250, 354, 250, 250, 550, 554, 250]
    # A refused DATA leaves the transaction open (nested MAIL is 503) until RSET.
    assert t.codes[11:] == [503, 250, 250, 250, 354, 250, 221]
    assert t.data == b"one\r\ntwo\r\n"
    assert completed(t) == 2


def test_commands_after_refused_mail_are_503(smtp: Driver) -> None:
    refuse_mail = answer(
        lambda e: replies.SCRIPT_REJECT if isinstance(e, events.MailFrom) else None
    )
    t = smtp(
        session("EHLO c.example", MAIL, "RCPT TO:<b@example.net>", "DATA", "NOOP"),
        decide=refuse_mail,
    )
    assert t.codes == [220, 250, 550, 503, 503, 250]
    assert not t.of(events.MessageStart)


# --- BDAT (RFC 3030) -----------------------------------------------------------------------


def test_bdat_chunks_are_exact_and_not_unstuffed(smtp: Driver) -> None:
    chunk1 = b"Subject: x\r\n\r\n..dot\r\n.\r\nQUIT\r\n"
    chunk2 = b"bare\nlf\rcr\x00"
    t = smtp(
        ENVELOPE
        + b"BDAT %d\r\n" % len(chunk1)
        + chunk1
        + b"BDAT %d LAST\r\n" % len(chunk2)
        + chunk2
        + session("NOOP")
    )
    assert t.codes == [220, 250, 250, 250, 250, 250, 250]
    assert t.replies[4].lines == (f"2.0.0 {len(chunk1)} octets received",)
    assert t.data == chunk1 + chunk2
    assert t.of(events.MessageStart) == [events.MessageStart(chunking=True)]
    assert completed(t) == 1


def test_bdat_zero_last_ends_the_message(smtp: Driver) -> None:
    t = smtp(ENVELOPE + b"BDAT 3\r\nabcBDAT 0 LAST\r\n")
    assert t.codes == [220, 250, 250, 250, 250, 250]
    assert t.data == b"abc" and completed(t) == 1


def test_data_after_bdat_is_503(smtp: Driver) -> None:
    t = smtp(ENVELOPE + b"BDAT 2\r\nhiDATA\r\nBDAT 0 LAST\r\n")
    assert t.codes == [220, 250, 250, 250, 250, 503, 250]
    assert t.replies[5].lines == ("5.5.1 DATA not allowed after BDAT in one transaction",)
    assert t.data == b"hi" and completed(t) == 1


@pytest.mark.parametrize(
    ("prefix", "code"),
    [(b"", 503), (session("EHLO c.example"), 503), (session("EHLO c.example", MAIL), 554)],
)
def test_refused_bdat_still_consumes_its_chunk(smtp: Driver, prefix: bytes, code: int) -> None:
    chunk = b"RSET\r\nQUIT\r\n"
    t = smtp(prefix + b"BDAT %d LAST\r\n" % len(chunk) + chunk + session("NOOP"))
    assert t.codes[-2:] == [code, 250]  # neither RSET nor QUIT inside the chunk ran
    assert not t.closed and not t.of(events.MessageStart)


@pytest.mark.parametrize("argument", ["", "x", "-1", "1 NOTLAST", "1 LAST x", "²", "1" * 19])
def test_bad_bdat_syntax_closes_the_connection(smtp: Driver, argument: str) -> None:
    t = smtp(ENVELOPE + f"BDAT {argument}".encode() + b"\r\nNOOP\r\n")
    assert t.codes == [220, 250, 250, 250, 501, 421]
    assert t.closed


def test_bdat_over_the_size_limit(smtp: Driver) -> None:
    t = smtp(
        ENVELOPE + b"BDAT 60\r\n" + b"x" * 60 + b"BDAT 60 LAST\r\n" + b"y" * 60 + session(MAIL),
        settings=ProtocolSettings(max_message_size=100),
    )
    assert t.codes == [220, 250, 250, 250, 250, 552, 250]
    assert completed(t) == 0 and len(t.of(events.MessageAborted)) == 1


def test_rset_between_bdat_chunks_discards_the_message(smtp: Driver) -> None:
    t = smtp(ENVELOPE + b"BDAT 2\r\nhiRSET\r\nBDAT 0 LAST\r\n")
    assert t.codes == [220, 250, 250, 250, 250, 250, 503]
    assert t.kinds()[-1] == "TransactionReset"
    assert completed(t) == 0


def test_eof_between_bdat_chunks_aborts(smtp: Driver) -> None:
    t = smtp(ENVELOPE + b"BDAT 2\r\nhi", eof=True)
    assert t.kinds()[-2:] == ["MessageAborted", "ConnectionClosing"]
