"""The client machine against real servers: a ``mailwarden run`` node and Postfix's smtp-sink.

The asyncio adapter here is the smallest one that can drive the machine (the delivery adapter
proper belongs to the delivery work): it writes what the machine has to send, reads when the
machine needs data, and applies the machine's own RFC 5321 §4.5.3.2 timeout, capped for tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.node import running_node
from tests.support.sink import smtp_sink as start_sink

from mailwarden.smtp.client import (
    NEED_DATA,
    ConnectionClosed,
    Envelope,
    Event,
    HelloDone,
    SmtpClientConnection,
    TransactionDone,
)

SMTP_SINK = "/usr/sbin/smtp-sink"
TEST_TIMEOUT = 15.0  # the RFC values are minutes; a test must not hang that long


class Adapter:
    """Moves bytes between a socket and an SmtpClientConnection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn) -> None:
        self.reader, self.writer, self.conn = reader, writer, conn

    @classmethod
    async def open(cls, port: int, **options: object) -> Adapter:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer, SmtpClientConnection("client.test.example", **options))

    async def next_event(self) -> Event:
        while True:
            self.writer.write(self.conn.data_to_send())  # what the commands produced
            event = self.conn.next_event()
            if event is not NEED_DATA:
                return event  # type: ignore[return-value]
            self.writer.write(self.conn.data_to_send())  # what the replies produced
            await self.writer.drain()
            timeout = min(self.conn.current_timeout() or TEST_TIMEOUT, TEST_TIMEOUT)
            self.conn.receive_data(await asyncio.wait_for(self.reader.read(65536), timeout))

    async def expect(self, kind: type) -> Event:
        """The next event of ``kind``, skipping the per-recipient ones before it."""
        while True:
            event = await self.next_event()
            if isinstance(event, kind):
                return event

    async def hello(self) -> HelloDone:
        greeting = await self.next_event()
        assert greeting.accepted, greeting  # type: ignore[union-attr]
        self.conn.ehlo()
        hello = await self.expect(HelloDone)
        assert hello.accepted, hello  # type: ignore[union-attr]
        return hello  # type: ignore[return-value]

    async def send(self, envelope: Envelope, message: bytes) -> TransactionDone:
        self.conn.send_message(envelope, message)
        return await self.expect(TransactionDone)  # type: ignore[return-value]

    async def quit(self) -> None:
        self.conn.quit()
        assert await self.expect(ConnectionClosed) == ConnectionClosed(expected=True)
        self.writer.close()


def message(number: int) -> bytes:
    return (
        f"From: s@example.com\nTo: r@example.org\nSubject: message {number}\n\n"
        f"line one\n.leading dot {number}\nlast line\n"
    ).encode()


def codes(done: TransactionDone) -> dict[str, int]:
    return {r.recipient: r.final.code for r in done.recipients}


@pytest.fixture
def smtp_sink(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    with start_sink(tmp_path) as sink:
        yield sink.port, sink.dumps


@pytest.fixture
def lmtp_sink(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    with start_sink(tmp_path, "-L") as sink:
        yield sink.port, sink.dumps


def test_several_pipelined_messages_over_one_connection_to_smtp_sink(smtp_sink) -> None:
    port, dumps = smtp_sink

    async def scenario() -> list[TransactionDone]:
        client = await Adapter.open(port)
        hello = await client.hello()
        assert hello.extensions.pipelining
        results = []
        for number in range(3):
            envelope = Envelope("s@example.com", [f"r{number}@example.org", "all@example.org"])
            results.append(await client.send(envelope, message(number)))
        await client.quit()
        return results

    results = asyncio.run(scenario())
    assert [codes(done) for done in results] == [
        {f"r{n}@example.org": 250, "all@example.org": 250} for n in range(3)
    ]
    dumped = sorted(path.read_bytes() for path in dumps.iterdir())
    assert len(dumped) == 3
    for number in range(3):
        # The dot-stuffed line arrives un-stuffed (smtp-sink writes its dumps with LF).
        body = f"line one\n.leading dot {number}\nlast line\n".encode()
        assert sum(body in dump for dump in dumped) == 1


def test_lmtp_per_recipient_replies_from_smtp_sink(lmtp_sink) -> None:
    port, dumps = lmtp_sink

    async def scenario() -> TransactionDone:
        client = await Adapter.open(port, lmtp=True)
        hello = await client.hello()
        assert hello.command == "LHLO"
        done = await client.send(
            Envelope("s@example.com", ["a@example.org", "b@example.org"]), message(1)
        )
        await client.quit()
        return done

    done = asyncio.run(scenario())
    assert codes(done) == {"a@example.org": 250, "b@example.org": 250}
    # One reply per recipient after the data, each its own (RFC 2033 §4.2).
    assert done.data_reply is None
    assert all(r.final is not r.rcpt_reply for r in done.recipients)
    assert len(list(dumps.iterdir())) == 1


POLICY = """\
from mailwarden.policy.actions import Defer, Reject

async def rcpt_to(conn, tx, recipient):
    local = recipient.address.partition("@")[0]
    if local.startswith("reject"):
        return Reject("No such user here", code=550, enhanced="5.1.1")
    if local.startswith("defer"):
        return Defer("Mailbox busy, try later", code=451, enhanced="4.2.0")
    return None
"""


def test_mixed_recipients_and_chunking_against_a_node(tmp_path: Path) -> None:
    (tmp_path / "policy.py").write_text(POLICY)
    script = 'script = "policy.py"\n'
    recipients = ["one@example.org", "reject@example.org", "defer@example.org", "two@example.org"]

    async def mixed(port: int) -> TransactionDone:
        client = await Adapter.open(port, use_chunking=False)  # DATA, pipelined
        hello = await client.hello()
        assert hello.extensions.pipelining
        done = await client.send(Envelope("s@example.com", recipients), message(1))
        await client.quit()
        return done

    async def chunked(port: int) -> TransactionDone:
        client = await Adapter.open(port, chunk_size=16)  # several BDAT chunks (RFC 3030)
        hello = await client.hello()
        assert hello.extensions.chunking
        done = await client.send(Envelope("s@example.com", ["three@example.org"]), message(2))
        await client.quit()
        return done

    with running_node(tmp_path, server=script) as node:
        first = asyncio.run(mixed(node.port))
        second = asyncio.run(chunked(node.port))
    assert codes(first) == {
        "one@example.org": 250,
        "reject@example.org": 550,
        "defer@example.org": 451,
        "two@example.org": 250,
    }
    rejected = first.recipients[1].final
    assert (rejected.enhanced, rejected.text) == ("5.1.1", "No such user here")
    assert first.recipients[2].final.enhanced == "4.2.0"
    assert first.data_reply is not None and first.data_reply.code == 250
    assert codes(second) == {"three@example.org": 250}
