"""OutboundConnection against Postfix's smtp-sink over real sockets: several messages per
connection, source address and HELO, LMTP, no PIPELINING, refused recipients, refused greeting,
421 and a dropped connection, SMTPUTF8, first target down."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from tests.support.node import free_port
from tests.support.sink import smtp_sink

from mailwarden.delivery.connection import ConnectOptions, OutboundConnection, open_first
from mailwarden.delivery.errors import DeliveryError
from mailwarden.delivery.mx import Target
from mailwarden.delivery.tls import TlsMode, TlsPolicy
from mailwarden.smtp.client import Envelope

OPTIONS = ConnectOptions("out1.test.example")
MESSAGE = b"Subject: test\r\n\r\nfirst line\r\n.leading dot\r\n"
TWO = Envelope("s@x.example", ["a@example.org", "b@example.org"])


def target(port: int, host: str = "sink.test.example") -> Target:
    return Target(10, host, "127.0.0.1", port)


def finals(done) -> dict[str, tuple[int, str | None]]:
    return {r.recipient: (r.final.code, r.final.enhanced) for r in done.recipients}


async def test_several_messages_over_one_connection_from_the_chosen_source(
    tmp_path: Path,
) -> None:
    options = ConnectOptions("out1.test.example", source_ip="127.0.0.2")
    with smtp_sink(tmp_path) as sink:
        conn = await OutboundConnection.open(target(sink.port), options)
        assert conn.source_ip == "127.0.0.2" and conn.extensions.pipelining
        assert conn.tls.protocol is None and conn.tls.failure == "starttls-not-supported"
        for number in range(3):
            envelope = Envelope("s@example.com", [f"r{number}@example.org", "all@example.org"])
            done = await conn.send(envelope, MESSAGE)
            assert done.delivered == (f"r{number}@example.org", "all@example.org")
            assert conn.usable
        assert conn.messages_sent == 3
        await conn.close()
        assert not conn.usable
        dumps = sink.messages()
    assert len(dumps) == 3
    for dump in dumps:
        assert b"X-Client-Addr: 127.0.0.2\n" in dump
        assert b"X-Helo-Args: out1.test.example\n" in dump
        assert dump.endswith(b"first line\n.leading dot\n\n")  # un-stuffed at the sink


async def test_lmtp_gets_one_reply_per_recipient(tmp_path: Path) -> None:
    options = ConnectOptions("out1.test.example", lmtp=True)
    with smtp_sink(tmp_path, "-L") as sink:
        conn = await OutboundConnection.open(target(sink.port), options)
        done = await conn.send(
            Envelope("s@example.com", ["a@example.org", "b@example.org"]), MESSAGE
        )
        await conn.close()
        (dump,) = sink.messages()
    assert finals(done) == {"a@example.org": (250, "2.2.0"), "b@example.org": (250, "2.2.0")}
    assert done.data_reply is None  # RFC 2033 §4.2: the replies after the data are per recipient
    assert b"X-Client-Proto: LMTP\n" in dump


async def test_without_pipelining_every_command_waits(tmp_path: Path) -> None:
    with smtp_sink(tmp_path, "-p") as sink:
        conn = await OutboundConnection.open(target(sink.port), OPTIONS)
        assert not conn.extensions.pipelining
        for _ in range(2):
            done = await conn.send(Envelope("s@example.com", ["a@example.org"]), MESSAGE)
            assert done.delivered == ("a@example.org",)
        await conn.close()
        assert len(sink.messages()) == 2


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (("-r", "RCPT"), (450, "4.3.0")),
        (("-f", "RCPT", "-B", "550 5.1.1 No such user"), (550, "5.1.1")),
    ],
    ids=["soft", "hard"],
)
async def test_refused_recipients_each_get_their_reply_and_the_connection_goes_on(
    tmp_path: Path, flags: tuple[str, ...], expected: tuple[int, str]
) -> None:
    with smtp_sink(tmp_path, *flags) as sink:
        conn = await OutboundConnection.open(target(sink.port), OPTIONS)
        for _ in range(2):
            done = await conn.send(
                Envelope("s@x.example", ["a@example.org", "b@example.org"]), MESSAGE
            )
            assert done.delivered == ()
            assert finals(done) == {"a@example.org": expected, "b@example.org": expected}
            assert conn.usable  # RSET closed the refused transaction
        assert conn.messages_sent == 2
        await conn.close()
        assert sink.messages() == []


async def test_a_5xx_greeting_is_the_remote_reply_and_permanent(tmp_path: Path) -> None:
    with smtp_sink(tmp_path, "-f", "CONNECT", "-B", "554 5.7.1 Go away") as sink:
        with pytest.raises(DeliveryError) as caught:
            await OutboundConnection.open(target(sink.port), OPTIONS)
        # Every target refuses, one is not even listening: the permanent reply decides.
        closed = free_port()
        with pytest.raises(DeliveryError) as all_failed:
            await open_first([target(closed), target(sink.port, "mx2.test.example")], OPTIONS)
    error = caught.value
    assert (error.stage, error.permanent, error.reply.remote) == ("greeting", True, True)
    assert (error.reply.code, error.reply.enhanced, error.reply.text) == (554, "5.7.1", "Go away")
    assert all_failed.value.reply.code == 554 and all_failed.value.host == "mx2.test.example"


async def test_open_first_moves_past_a_closed_port(tmp_path: Path) -> None:
    closed = free_port()
    with smtp_sink(tmp_path) as sink:
        targets = [target(closed, "mx1.test.example"), target(sink.port, "mx2.test.example")]
        conn, errors = await open_first(targets, OPTIONS)
        assert conn.target.host == "mx2.test.example"
        await conn.send(Envelope("s@x.example", ["a@example.org"]), MESSAGE)
        await conn.close()
        assert len(sink.messages()) == 1
    (refused,) = errors
    assert (refused.stage, refused.host, refused.reply.enhanced) == (
        "connect",
        "mx1.test.example",
        "4.4.1",
    )
    assert refused.reply.temporary and not refused.reply.remote
    assert "Connection refused" in refused.reply.text


async def test_all_targets_down_is_a_temporary_connect_failure() -> None:
    targets = [target(free_port(), "mx1.test.example"), target(free_port(), "mx2.test.example")]
    with pytest.raises(DeliveryError) as caught:
        await open_first(targets, OPTIONS)
    assert caught.value.reply.enhanced == "4.4.1" and caught.value.host == "mx1.test.example"


async def test_a_421_makes_the_connection_unusable(tmp_path: Path) -> None:
    with smtp_sink(tmp_path, "-Q", "RCPT") as sink:
        conn = await OutboundConnection.open(target(sink.port), OPTIONS)
        with pytest.raises(DeliveryError) as caught:
            await conn.send(Envelope("s@x.example", ["a@example.org"]), MESSAGE)
        assert not conn.usable
        await conn.close()  # never raises
    assert caught.value.reply.code == 421 and caught.value.reply.remote
    assert caught.value.reply.temporary


async def test_a_connection_dropped_after_the_data_is_temporary(tmp_path: Path) -> None:
    with smtp_sink(tmp_path, "-q", ".") as sink:
        conn = await OutboundConnection.open(target(sink.port), OPTIONS)
        with pytest.raises(DeliveryError) as caught:
            await conn.send(Envelope("s@x.example", ["a@example.org"]), MESSAGE)
        assert not conn.usable
        await conn.close()
    error = caught.value
    assert (error.stage, error.reply.enhanced, error.reply.remote) == ("data", "4.4.2", False)
    assert "end of data (message may be sent more than once)" in error.reply.text


async def test_a_message_that_needs_smtputf8_is_refused_before_sending(tmp_path: Path) -> None:
    with smtp_sink(tmp_path) as sink:  # smtp-sink offers no SMTPUTF8
        conn = await OutboundConnection.open(target(sink.port), OPTIONS)
        utf8 = Envelope("s@x.example", ["jörg@example.org"], smtputf8=True)
        with pytest.raises(DeliveryError) as caught:
            await conn.send(utf8, MESSAGE)
        assert conn.usable  # nothing was sent
        done = await conn.send(Envelope("s@x.example", ["a@example.org"]), MESSAGE)
        assert done.delivered == ("a@example.org",)
        await conn.close()
    assert (caught.value.reply.code, caught.value.reply.enhanced) == (550, "5.6.7")
    assert caught.value.permanent


async def test_credentials_are_not_sent_in_plaintext_unless_the_route_says_none(
    tmp_path: Path,
) -> None:
    with smtp_sink(tmp_path) as sink:  # offers AUTH PLAIN LOGIN, no STARTTLS
        opportunistic = ConnectOptions("out1.test.example", auth=("alice", "s3cret"))
        with pytest.raises(DeliveryError) as caught:
            await OutboundConnection.open(target(sink.port), opportunistic)
        plaintext = ConnectOptions(
            "out1.test.example", auth=("alice", "s3cret"), tls=TlsPolicy(TlsMode.NONE)
        )
        conn = await OutboundConnection.open(target(sink.port), plaintext)
        assert conn.usable and conn.tls.protocol is None
        await conn.close()
    assert (caught.value.stage, caught.value.reply.enhanced) == ("auth", "4.7.11")
    assert "s3cret" not in repr(opportunistic)


async def test_a_message_of_several_write_blocks_arrives_whole(tmp_path: Path) -> None:
    lines = [b"line %07d " % number + b"y" * 60 for number in range(50_000)]  # ~3.5 MB
    message = b"Subject: big\r\n\r\n" + b"\r\n".join(lines) + b"\r\n"
    with smtp_sink(tmp_path) as sink:
        conn = await OutboundConnection.open(target(sink.port), OPTIONS)
        done = await conn.send(Envelope("s@x.example", ["a@example.org"]), message)
        assert conn.usable
        await conn.close()
        (dump,) = sink.messages()
    assert done.delivered == ("a@example.org",)
    assert dump.endswith(b"\n".join(lines) + b"\n\n")


async def test_open_first_tries_at_most_the_address_limit(tmp_path: Path) -> None:
    """Six addresses that refuse, then one that works: with Postfix's default of 5 the
    working one is left for the next attempt; without a limit it is reached."""
    refusing = [target(free_port(), f"mx{n}.test.example") for n in range(6)]
    with smtp_sink(tmp_path) as sink:
        targets = [*refusing, target(sink.port, "mx7.test.example")]
        with pytest.raises(DeliveryError) as caught:
            await open_first(targets, OPTIONS, address_limit=5)
        conn, errors = await open_first(targets, OPTIONS, address_limit=0)
        await conn.close()
    assert caught.value.stage == "connect"
    assert conn.target.host == "mx7.test.example" and len(errors) == 6


async def test_open_first_gives_up_after_the_session_limit() -> None:
    """Servers that greet and answer EHLO but offer no STARTTLS, where TLS is required: each
    is a session that failed; after 2 (Postfix's smtp_mx_session_limit) the attempt stops."""
    sessions = 0

    async def greet(reader, writer) -> None:
        nonlocal sessions
        sessions += 1
        writer.write(b"220 plain.test.example ESMTP\r\n")
        while line := await reader.readline():
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                writer.write(b"250-plain.test.example\r\n250 PIPELINING\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                break
            else:
                writer.write(b"502 5.5.1 no\r\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(greet, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    required = ConnectOptions("out1.test.example", tls=TlsPolicy(TlsMode.REQUIRED))
    targets = [target(port, f"mx{n}.test.example") for n in range(4)]
    try:
        with pytest.raises(DeliveryError) as limited:
            await open_first(targets, required, session_limit=2)
        tried_with_limit = sessions
        with pytest.raises(DeliveryError):
            await open_first(targets, required, session_limit=0)
    finally:
        server.close()
        await server.wait_closed()
    assert limited.value.stage == "tls"
    assert (tried_with_limit, sessions - tried_with_limit) == (2, 4)
