"""OutboundConnection against small scripted peers on real sockets, for what no real server does
on demand: never answering, breaking the TLS handshake, refusing STARTTLS. And a long line
delivered to a real ``mailwarden run`` node, arriving as Postfix would send it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from tests.support.node import running_node

from mailwarden.delivery.connection import ConnectOptions, OutboundConnection
from mailwarden.delivery.errors import DeliveryError
from mailwarden.delivery.mx import Target
from mailwarden.delivery.tls import TlsMode, TlsPolicy
from mailwarden.smtp.client import Envelope, Timeouts
from mailwarden.spool.reader import iter_messages, read_message_bytes

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, list[bytes]], Awaitable[None]]


@asynccontextmanager
async def scripted_peer(handler: Handler) -> AsyncIterator[tuple[int, list[list[bytes]]]]:
    """A loopback server running ``handler(reader, writer, log)`` per connection; yields its
    port and, per connection, the command lines ``command()`` logged."""
    sessions: list[list[bytes]] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sessions.append([])
        try:
            await handler(reader, writer, sessions[-1])
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], sessions
    finally:
        server.close()
        await server.wait_closed()


async def command(reader: asyncio.StreamReader, log: list[bytes]) -> bytes:
    line = await reader.readline()
    log.append(line)
    return line.upper()


def target(port: int) -> Target:
    return Target(10, "peer.test.example", "127.0.0.1", port)


def tls_options(mode: TlsMode) -> ConnectOptions:
    return ConnectOptions("out.test.example", tls=TlsPolicy(mode))


async def test_a_peer_that_never_greets_times_out_with_4_4_2() -> None:
    async def silent(reader, writer, log) -> None:
        await reader.read()  # says nothing until the client gives up

    short = ConnectOptions("out.test.example", timeouts=Timeouts(greeting=0.3))
    async with scripted_peer(silent) as (port, _):
        with pytest.raises(DeliveryError) as caught:
            await OutboundConnection.open(target(port), short)
    error = caught.value
    assert (error.stage, error.reply.enhanced, error.reply.temporary) == ("timeout", "4.4.2", True)
    assert "GREETING" in error.reply.text


async def starttls_then_garbage(reader, writer, log: list[bytes]) -> None:
    """Offers STARTTLS, says 220, then answers the ClientHello with plaintext; a session that
    does not ask for STARTTLS goes on in plaintext."""
    writer.write(b"220 peer.test.example ESMTP\r\n")
    while line := await command(reader, log):
        if line.startswith(b"EHLO"):
            writer.write(b"250-peer.test.example\r\n250 STARTTLS\r\n")
        elif line.startswith(b"STARTTLS"):
            writer.write(b"220 2.0.0 go ahead\r\n")
            await writer.drain()
            await reader.read(1)  # the ClientHello has begun
            writer.write(b"this is not TLS at all\r\n" * 20)
            await writer.drain()
            return
        elif line.startswith(b"QUIT"):
            writer.write(b"221 2.0.0 bye\r\n")
            await writer.drain()
            return


async def test_opportunistic_tls_reconnects_in_plaintext_after_a_failed_handshake() -> None:
    async with scripted_peer(starttls_then_garbage) as (port, seen):
        conn = await OutboundConnection.open(target(port), tls_options(TlsMode.OPTIONAL))
        assert conn.usable
        assert conn.tls.protocol is None and conn.tls.failure == "validation-failure"
        await conn.close()
        await asyncio.sleep(0.05)
    assert len(seen) == 2
    assert any(line.startswith(b"STARTTLS") for line in seen[0])
    # The second session does not try STARTTLS again.
    assert [line.split()[0] for line in seen[1]] == [b"EHLO", b"QUIT"]


@pytest.mark.parametrize("mode", [TlsMode.OPTIONAL_VERIFY, TlsMode.REQUIRED])
async def test_a_failed_handshake_is_4_7_5_when_tls_must_succeed(mode: TlsMode) -> None:
    async with scripted_peer(starttls_then_garbage) as (port, seen):
        with pytest.raises(DeliveryError) as caught:
            await OutboundConnection.open(target(port), tls_options(mode))
    assert (caught.value.stage, caught.value.reply.enhanced) == ("tls", "4.7.5")
    assert len(seen) == 1  # no plaintext retry


async def test_starttls_refused_is_plaintext_when_optional_and_4_7_4_when_required() -> None:
    async def refuses(reader, writer, log):
        writer.write(b"220 peer.test.example ESMTP\r\n")
        while line := await command(reader, log):
            if line.startswith(b"EHLO"):
                writer.write(b"250-peer.test.example\r\n250 STARTTLS\r\n")
            elif line.startswith(b"STARTTLS"):
                writer.write(b"454 4.7.0 TLS not available\r\n")
            elif line.startswith(b"QUIT"):
                writer.write(b"221 2.0.0 bye\r\n")
                await writer.drain()
                return

    async with scripted_peer(refuses) as (port, _):
        conn = await OutboundConnection.open(target(port), tls_options(TlsMode.OPTIONAL))
        assert conn.usable and conn.tls.failure == "starttls-not-supported"
        await conn.close()
        with pytest.raises(DeliveryError) as caught:
            await OutboundConnection.open(target(port), tls_options(TlsMode.REQUIRED_VERIFY))
    assert caught.value.reply.enhanced == "4.7.4"
    assert "refused with 454 4.7.0 TLS not available" in caught.value.reply.text


async def test_a_5000_octet_line_arrives_as_postfix_sends_it(tmp_path: Path) -> None:
    line = (b"0123456789abcdefghij" * 250)[:5000]
    message = b"Subject: long\r\n\r\n" + line + b"\r\nlast\r\n"
    with running_node(tmp_path) as node:
        conn = await OutboundConnection.open(target(node.port), tls_options(TlsMode.NONE))
        done = await conn.send(Envelope("s@example.com", ["r@example.org"]), message)
        await conn.close()
        (stored,) = list(iter_messages(node.spool))
        data = read_message_bytes(node.spool, stored.id)
    assert done.delivered == ("r@example.org",)
    assert data is not None
    body = data.split(b"\r\n\r\n", 1)[1]
    # Postfix (smtp_line_length_limit = 998): 998 octets, then SPACE + 997 per line.
    pieces = [line[:998]] + [b" " + line[i : i + 997] for i in range(998, 5000, 997)]
    assert body == b"\r\n".join(pieces) + b"\r\nlast\r\n"
    assert [len(piece) for piece in pieces] == [998, 998, 998, 998, 998, 15]


async def test_a_connection_the_server_closed_while_idle_is_not_usable() -> None:
    async def hangs_up_after_ehlo(reader, writer, log):
        writer.write(b"220 peer.test.example ESMTP\r\n")
        await command(reader, log)
        writer.write(b"250 peer.test.example\r\n")
        await writer.drain()

    async with scripted_peer(hangs_up_after_ehlo) as (port, _):
        conn = await OutboundConnection.open(target(port), tls_options(TlsMode.NONE))
        for _ in range(100):  # until the loop has read the close
            if not conn.usable:
                break
            await asyncio.sleep(0.01)
        assert not conn.usable
        await conn.close()
