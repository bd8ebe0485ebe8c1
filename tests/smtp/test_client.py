"""The outbound SMTP/LMTP client machine, fed the server's bytes whole and byte by byte."""

from __future__ import annotations

import pytest

from mailwarden.smtp.client import (
    TIMEOUTS,
    ClientState,
    ConnectionClosed,
    Envelope,
    ExtensionMissing,
    Greeting,
    HelloDone,
    LocalProtocolError,
    MessageTooLarge,
    QuitDone,
    Recipient,
    RecipientReply,
    RemoteProtocolError,
    ResetDone,
    ServerClosing,
    TlsReady,
    TransactionDone,
    dot_stuff,
)

from .client_helpers import ClientRun

FULL_EHLO = (
    b"250-mx.example.net\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n"
    b"250-SMTPUTF8\r\n250-DSN\r\n250-ENHANCEDSTATUSCODES\r\n250-AUTH PLAIN LOGIN\r\n"
    b"250-AUTH=CRAM-MD5\r\n250 STARTTLS\r\n"
)
MESSAGE = b"Subject: hi\r\n\r\nbody\r\n"


@pytest.fixture(params=["whole", "bytewise"])
def run(request: pytest.FixtureRequest) -> ClientRun:
    return ClientRun(request.param)


@pytest.fixture(params=["whole", "bytewise"])
def mode(request: pytest.FixtureRequest) -> str:
    return request.param


def codes(done: TransactionDone) -> dict[str, int]:
    return {r.recipient: r.final.code for r in done.recipients}


def test_greeting_and_ehlo_extensions(run: ClientRun) -> None:
    (greeting,) = run.server(b"220 mx.example.net ESMTP\r\n")
    assert isinstance(greeting, Greeting) and greeting.accepted
    assert run.conn.current_timeout() is None
    run.conn.ehlo()
    assert run.sent() == b"EHLO client.example\r\n"
    assert run.conn.current_timeout() == TIMEOUTS.command
    (hello,) = run.server(FULL_EHLO)
    assert isinstance(hello, HelloDone) and hello.accepted and hello.command == "EHLO"
    ext = hello.extensions
    assert ext.pipelining and ext.eightbitmime and ext.smtputf8 and ext.dsn and ext.starttls
    assert ext.enhanced_status_codes and not ext.chunking
    assert ext.size == 1000
    assert ext.auth == {"PLAIN", "LOGIN", "CRAM-MD5"}
    assert run.conn.state is ClientState.READY


def test_ehlo_5xx_falls_back_to_helo(run: ClientRun) -> None:
    run.server(b"220 old.example\r\n")
    run.conn.ehlo()
    run.sent()
    assert run.server(b"500 5.5.1 what?\r\n") == []
    assert run.sent() == b"HELO client.example\r\n"
    (hello,) = run.server(b"250 old.example\r\n")
    assert hello.command == "HELO" and hello.accepted and not hello.extensions.keywords
    assert run.conn.state is ClientState.READY


def test_pipelined_mixed_recipients_each_reported(run: ClientRun) -> None:
    run.ready()
    env = Envelope("s@example.org", ["a@example.net", "b@example.net", "c@example.net"])
    run.conn.send_message(env, MESSAGE)
    # RFC 2920: the whole group in one write, DATA last.
    assert run.sent() == (
        b"MAIL FROM:<s@example.org>\r\nRCPT TO:<a@example.net>\r\n"
        b"RCPT TO:<b@example.net>\r\nRCPT TO:<c@example.net>\r\nDATA\r\n"
    )
    events = run.server(
        b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n451 4.7.1 later\r\n550 5.1.1 unknown\r\n354 go on\r\n"
    )
    assert [(e.recipient, e.reply.code) for e in events if isinstance(e, RecipientReply)] == [
        ("a@example.net", 250),
        ("b@example.net", 451),
        ("c@example.net", 550),
    ]
    assert run.sent() == MESSAGE + b".\r\n"
    assert run.conn.current_timeout() == TIMEOUTS.data_end
    (done,) = run.server(b"250 2.0.0 queued as X\r\n")
    assert isinstance(done, TransactionDone)
    assert codes(done) == {"a@example.net": 250, "b@example.net": 451, "c@example.net": 550}
    assert done.delivered == ("a@example.net",)
    assert done.recipients[2].final.enhanced == "5.1.1"
    assert run.conn.state is ClientState.READY


def test_without_pipelining_each_command_waits(run: ClientRun) -> None:
    run.ready(b"250 mx.example.net\r\n")
    run.conn.send_message(Envelope("s@x.org", ["a@x.net", "b@x.net"]), b"x\n")
    assert run.sent() == b"MAIL FROM:<s@x.org>\r\n"
    run.server(b"250 ok\r\n")
    assert run.sent() == b"RCPT TO:<a@x.net>\r\n"
    run.server(b"550 no\r\n")
    assert run.sent() == b"RCPT TO:<b@x.net>\r\n"
    run.server(b"250 ok\r\n")
    assert run.sent() == b"DATA\r\n"
    run.server(b"354 go\r\n")
    assert run.sent() == b"x\r\n.\r\n"
    (done,) = run.server(b"250 ok\r\n")
    assert codes(done) == {"a@x.net": 550, "b@x.net": 250}


def test_no_recipient_accepted_ends_with_rset_and_the_connection_is_reused(run: ClientRun) -> None:
    run.ready()
    run.conn.send_message(Envelope("s@x.org", ["a@x.net"]), MESSAGE)
    run.sent()
    (rejected,) = run.server(b"250 ok\r\n550 5.1.1 no\r\n554 5.5.1 no valid recipients\r\n")
    assert isinstance(rejected, RecipientReply) and rejected.reply.code == 550
    assert run.sent() == b"RSET\r\n"
    (done,) = run.server(b"250 ok\r\n")
    assert codes(done) == {"a@x.net": 550}
    run.conn.send_message(Envelope("s@x.org", ["b@x.net"]), MESSAGE)
    assert run.sent().startswith(b"MAIL FROM:<s@x.org>\r\n")


def test_refused_mail_fails_every_recipient_without_rset(run: ClientRun) -> None:
    run.ready()
    run.conn.send_message(Envelope("s@x.org", ["a@x.net", "b@x.net"]), MESSAGE)
    run.sent()
    (done,) = run.server(b"451 4.3.0 try later\r\n503 no\r\n503 no\r\n503 no\r\n")
    assert codes(done) == {"a@x.net": 451, "b@x.net": 451}
    assert run.sent() == b""


def test_dot_stuffing_and_line_end_normalisation() -> None:
    assert dot_stuff(b".top\nmid\r.x\r\n..two\r\nend") == (
        b"..top\r\nmid\r\n..x\r\n...two\r\nend\r\n.\r\n"
    )
    assert dot_stuff(b"") == b".\r\n"
    assert dot_stuff(b".\r\n") == b"..\r\n.\r\n"


def test_mail_and_rcpt_parameters_follow_the_extensions(run: ClientRun) -> None:
    run.ready(FULL_EHLO)
    env = Envelope(
        "s@x.org",
        [Recipient("a@x.net", notify=("SUCCESS", "FAILURE"), orcpt="rfc822;a@x.net")],
        body="8BITMIME",
        smtputf8=True,
        ret="HDRS",
        envid="ID1",
    )
    run.conn.send_message(env, MESSAGE)
    assert run.sent() == (
        b"MAIL FROM:<s@x.org> SIZE=21 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=ID1\r\n"
        b"RCPT TO:<a@x.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a@x.net\r\nDATA\r\n"
    )


def test_dsn_parameters_are_dropped_when_dsn_is_not_offered(run: ClientRun) -> None:
    run.ready()
    recipient = Recipient("a@x.net", notify=("NEVER",))
    env = Envelope("s@x.org", [recipient], ret="FULL", body="8BITMIME")
    run.conn.send_message(env, MESSAGE)
    assert run.sent().split(b"\r\n")[:2] == [b"MAIL FROM:<s@x.org>", b"RCPT TO:<a@x.net>"]


def test_size_and_smtputf8_are_refused_before_sending(run: ClientRun) -> None:
    run.ready(b"250-mx\r\n250-SIZE 10\r\n250 PIPELINING\r\n")
    with pytest.raises(MessageTooLarge) as caught:
        run.conn.send_message(Envelope("s@x.org", ["a@x.net"]), b"x" * 20)
    assert (caught.value.size, caught.value.limit) == (22, 10)
    with pytest.raises(ExtensionMissing, match="SMTPUTF8"):
        run.conn.send_message(Envelope("s@x.org", ["a@x.net"], smtputf8=True), b"x")
    assert run.sent() == b"" and run.conn.state is ClientState.READY


def test_chunking_sends_bdat_chunks() -> None:
    for mode in ("whole", "bytewise"):
        run = ClientRun(mode, chunk_size=10)  # type: ignore[arg-type]
        run.ready(b"250-mx\r\n250-PIPELINING\r\n250 CHUNKING\r\n")
        run.conn.send_message(Envelope("s@x.org", ["a@x.net"]), b".dot\nline two\n")
        assert run.sent() == b"MAIL FROM:<s@x.org>\r\nRCPT TO:<a@x.net>\r\n"
        run.server(b"250 ok\r\n250 ok\r\n")
        assert run.sent() == b"BDAT 10\r\n.dot\r\nline"
        run.server(b"250 2.0.0 10 octets\r\n")
        assert run.sent() == b"BDAT 6 LAST\r\n two\r\n"
        (done,) = run.server(b"250 2.0.0 queued\r\n")
        assert codes(done) == {"a@x.net": 250}


def test_refused_bdat_chunk_fails_the_transaction_then_rset(run: ClientRun) -> None:
    run.ready(b"250-mx\r\n250 CHUNKING\r\n")
    run.conn.send_message(Envelope("s@x.org", ["a@x.net"]), MESSAGE)
    run.sent()
    run.server(b"250 ok\r\n")
    run.sent()
    run.server(b"250 ok\r\n")
    assert run.sent().startswith(b"BDAT 21 LAST\r\n")
    run.server(b"552 5.3.4 too big\r\n")
    assert run.sent() == b"RSET\r\n"
    (done,) = run.server(b"250 ok\r\n")
    assert codes(done) == {"a@x.net": 552}


def test_lmtp_one_reply_per_accepted_recipient() -> None:
    for mode in ("whole", "bytewise"):
        run = ClientRun(mode, lmtp=True)  # type: ignore[arg-type]
        run.server(b"220 lmtp ready\r\n")
        run.conn.ehlo()
        assert run.sent() == b"LHLO client.example\r\n"
        (hello,) = run.server(b"250-lmtp\r\n250 PIPELINING\r\n")
        assert hello.command == "LHLO"
        run.conn.send_message(Envelope("s@x.org", ["a@x", "b@x", "c@x"]), MESSAGE)
        run.sent()
        run.server(b"250 ok\r\n250 ok\r\n550 no\r\n250 ok\r\n354 go\r\n")
        assert run.sent() == MESSAGE + b".\r\n"
        assert run.server(b"250 2.0.0 a delivered\r\n") == []
        (done,) = run.server(b"452 4.2.2 c over quota\r\n")
        assert codes(done) == {"a@x": 250, "b@x": 550, "c@x": 452}
        assert done.recipients[2].final.text == "c over quota"


def test_starttls_forgets_extensions(run: ClientRun) -> None:
    run.ready(FULL_EHLO)
    run.conn.starttls()
    assert run.sent() == b"STARTTLS\r\n"
    (ready,) = run.server(b"220 2.0.0 go ahead\r\n")
    assert isinstance(ready, TlsReady) and run.conn.state is ClientState.AWAITING_TLS
    with pytest.raises(LocalProtocolError, match="AWAITING_TLS"):
        run.conn.send_message(Envelope("s@x.org", ["a@x.net"]), MESSAGE)
    run.conn.tls_established()
    assert not run.conn.extensions.keywords
    run.conn.ehlo()
    assert run.sent() == b"EHLO client.example\r\n"
    (hello,) = run.server(b"250-mx\r\n250 SIZE 99\r\n")
    assert hello.extensions.size == 99 and not hello.extensions.starttls


def test_plaintext_after_the_starttls_220_is_refused(mode: str) -> None:
    run = ClientRun(mode)  # type: ignore[arg-type]
    run.ready(FULL_EHLO)
    run.conn.starttls()
    with pytest.raises(RemoteProtocolError, match="after the 220 to STARTTLS"):
        run.server(b"220 go ahead\r\n250 injected\r\n")
    assert run.conn.state is ClientState.ERROR


def test_our_misuse_names_the_state() -> None:
    run = ClientRun("whole")
    with pytest.raises(LocalProtocolError, match=r"send_message\(\) .* \(state CONNECTED\)"):
        run.conn.send_message(Envelope("s@x.org", ["a@x.net"]), MESSAGE)
    run.ready(b"250 mx\r\n")
    with pytest.raises(LocalProtocolError, match="STARTTLS was not offered"):
        run.conn.starttls()
    with pytest.raises(LocalProtocolError, match="line end inside a command"):
        run.conn.send_message(Envelope("s@x.org\r\nRSET", ["a@x.net"]), MESSAGE)


@pytest.mark.parametrize(
    ("script", "message"),
    [
        (b"220 hi\r\nthis is not smtp\r\n", "not an SMTP reply line"),
        (b"354 hi\r\n", "not an answer to greeting"),
        (b"220 hi\r\n250 nobody asked\r\n", "reply nobody asked for"),
        (b"220-hi\r\n221 bye\r\n", "reply code changed"),
        (b"220 hi\r\n699 what\r\n", None),
    ],
)
def test_peer_misbehaviour_is_a_remote_protocol_error(
    mode: str, script: bytes, message: str | None
) -> None:
    run = ClientRun(mode)  # type: ignore[arg-type]
    with pytest.raises(RemoteProtocolError, match=message) as caught:
        run.server(script)
        if message is None:
            run.conn.ehlo()
            run.server(b"")
    assert caught.value.data or message is None
    assert run.conn.state is ClientState.ERROR


def test_wrong_code_class_for_the_command(run: ClientRun) -> None:
    run.ready()
    run.conn.send_message(Envelope("s@x.org", ["a@x.net"]), MESSAGE)
    run.sent()
    with pytest.raises(RemoteProtocolError, match="354 is not an answer to mail"):
        run.server(b"354 huh\r\n")


def test_connection_closed_while_a_reply_is_due(run: ClientRun) -> None:
    run.ready()
    run.conn.rset()
    with pytest.raises(RemoteProtocolError, match="closed while waiting for rset"):
        run.close()


def test_421_answers_everything_still_waiting(run: ClientRun) -> None:
    run.ready()
    run.conn.send_message(Envelope("s@x.org", ["a@x.net", "b@x.net"]), MESSAGE)
    run.sent()
    events = run.server(b"250 ok\r\n250 ok\r\n421 4.3.2 shutting down\r\n")
    done, closing = events[-2:]
    assert codes(done) == {"a@x.net": 421, "b@x.net": 421}
    assert isinstance(closing, ServerClosing) and run.conn.state is ClientState.CLOSING
    assert run.close() == [ConnectionClosed(expected=True)]


def test_rset_and_quit(run: ClientRun) -> None:
    run.ready()
    run.conn.rset()
    assert run.sent() == b"RSET\r\n"
    (reset,) = run.server(b"250 2.0.0 ok\r\n")
    assert isinstance(reset, ResetDone)
    run.conn.quit()
    assert run.sent() == b"QUIT\r\n"
    (bye,) = run.server(b"221 2.0.0 bye\r\n")
    assert isinstance(bye, QuitDone) and bye.reply.code == 221
    assert run.close() == [ConnectionClosed(expected=True)]
    assert run.conn.state is ClientState.CLOSED


def test_refused_greeting_leaves_only_quit(run: ClientRun) -> None:
    (greeting,) = run.server(b"554 5.7.1 go away\r\n")
    assert not greeting.accepted and run.conn.state is ClientState.REFUSED
    with pytest.raises(LocalProtocolError, match="REFUSED"):
        run.conn.ehlo()
    run.conn.quit()
    assert run.sent() == b"QUIT\r\n"
