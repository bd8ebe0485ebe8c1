"""What the recorder counts of real outbound connections (``OutboundConnection.open``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from mailwarden.delivery.connection import ConnectOptions, OutboundConnection
from mailwarden.delivery.mx import Target
from mailwarden.delivery.tls import TlsMode, TlsPolicy
from mailwarden.tlsrpt import store
from mailwarden.tlsrpt.recorder import TlsReportRecorder, utc_day


@asynccontextmanager
async def broken_tls_server() -> AsyncIterator[int]:
    """An SMTP server that offers STARTTLS and answers the handshake with garbage (a broken
    TLS terminator): opportunistic TLS fails and the client comes back in plaintext."""

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 broken.test ESMTP\r\n")
        try:
            while line := await reader.readline():
                verb = line[:4].upper()
                if verb == b"EHLO":
                    writer.write(b"250-broken.test\r\n250 STARTTLS\r\n")
                elif verb == b"STAR":
                    writer.write(b"220 go ahead\r\n")
                    await writer.drain()
                    await reader.read(4096)  # the ClientHello
                    writer.write(b"this is not TLS\r\n" * 8)
                    await writer.drain()
                    break
                elif verb == b"QUIT":
                    writer.write(b"221 bye\r\n")
                    break
                else:
                    writer.write(b"250 ok\r\n")
                await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(session, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def test_an_opportunistic_handshake_failure_counts_as_a_failure(tmp_path: Path) -> None:
    recorder = TlsReportRecorder()
    recorder.start(tmp_path, 60)
    policy = TlsPolicy(mode=TlsMode.OPTIONAL, policy_domain="broken.test")
    async with broken_tls_server() as port:
        target = Target(10, "mx.broken.test", "127.0.0.1", port)
        connection = await OutboundConnection.open(target, ConnectOptions("out.test", tls=policy))
        assert connection.tls.protocol is None and connection.tls.failure is not None
        recorder.connection_attempts([target], [policy], [], connection)
        await connection.close()
    await recorder.stop()
    db = store.connect(store.store_path(tmp_path))
    day = utc_day(recorder.clock())
    (counts,) = store.day_counts(db, day, "broken.test")
    db.close()
    assert (counts.successes, counts.failures) == (0, 1)
    ((detail, count),) = counts.details
    assert count == 1
    assert detail.result_type == connection.tls.failure
    assert (detail.receiving_mx_hostname, detail.receiving_ip) == ("mx.broken.test", "127.0.0.1")
    assert detail.sending_mta_ip == "127.0.0.1"


@asynccontextmanager
async def plain_server() -> AsyncIterator[int]:
    """An SMTP server without STARTTLS."""

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 plain.test ESMTP\r\n")
        try:
            while line := await reader.readline():
                writer.write(b"221 bye\r\n" if line[:4].upper() == b"QUIT" else b"250 ok\r\n")
                await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(session, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def test_a_session_after_a_failed_mta_sts_fetch_counts_as_that_failure(
    tmp_path: Path,
) -> None:
    # RFC 8460 §4.3.2: the MTA-STS policy could not be fetched (nothing cached), so the
    # session went ahead under the route's policy; the report says why there was no policy.
    recorder = TlsReportRecorder()
    recorder.start(tmp_path, 60)
    policy = TlsPolicy(
        mode=TlsMode.OPTIONAL,
        policy_type="sts",
        policy_domain="nopolicy.test",
        policy_failure="sts-policy-fetch-error",
    )
    async with plain_server() as port:
        target = Target(10, "mx.nopolicy.test", "127.0.0.1", port)
        connection = await OutboundConnection.open(target, ConnectOptions("out.test", tls=policy))
        recorder.connection_attempts([target], [policy], [], connection)
        await connection.close()
    await recorder.stop()
    db = store.connect(store.store_path(tmp_path))
    (counts,) = store.day_counts(db, utc_day(recorder.clock()), "nopolicy.test")
    db.close()
    assert (counts.successes, counts.failures) == (0, 1)
    ((detail, count),) = counts.details
    assert (detail.result_type, count) == ("sts-policy-fetch-error", 1)
    assert detail.receiving_mx_hostname == "mx.nopolicy.test"
