"""Helpers for the durability tests: a raw SMTP client, message builders, spool inspection.

The client is deliberately raw (asyncio streams, no SMTP library): the durability test must know
exactly which bytes were sent and whether a reply was read in full, and the error tests must see
the reply code a library might turn into an exception.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import textwrap
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from tests.support.node import Node, free_port, node_process, node_user_line

from mailwarden.spool import reader

REPLY_LINE = re.compile(rb"^([2-5]\d\d)([ -])(.*)\r\n\Z", re.DOTALL)


class ReplyError(Exception):
    """The server answered something that is not a well-formed SMTP reply."""


@dataclass(frozen=True)
class SmtpReply:
    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        return " ".join(self.lines)

    @property
    def enhanced(self) -> str:
        """The RFC 3463 enhanced status code at the start of the last line, or ''."""
        match = re.match(r"(\d\.\d{1,3}\.\d{1,3})\b", self.lines[-1]) if self.lines else None
        return match.group(1) if match else ""


async def read_reply(stream: asyncio.StreamReader) -> SmtpReply:
    """One whole (possibly multi-line) reply. Raises ConnectionError if the connection ends
    before the last line has been read in full, ReplyError if a line is malformed."""
    lines: list[str] = []
    while True:
        line = await stream.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError(f"connection ended inside a reply: {line!r}")
        match = REPLY_LINE.match(line)
        if match is None:
            raise ReplyError(f"malformed reply line {line!r}")
        lines.append(match.group(3).decode("ascii"))
        if match.group(2) == b" ":
            return SmtpReply(int(match.group(1)), tuple(lines))


class RawClient:
    """A plain SMTP client over asyncio streams, one command and one reply at a time."""

    def __init__(self, reader_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader_
        self.writer = writer

    @classmethod
    async def connect(cls, port: int, ehlo: str = "client.test.example") -> RawClient:
        stream_reader, stream_writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(stream_reader, stream_writer)
        greeting = await read_reply(stream_reader)
        assert greeting.code == 220, greeting
        reply = await client.command(f"EHLO {ehlo}")
        assert reply.code == 250, reply
        return client

    async def command(self, line: str) -> SmtpReply:
        self.writer.write(line.encode("ascii") + b"\r\n")
        await self.writer.drain()
        return await read_reply(self.reader)

    async def send_data(self, stuffed: bytes) -> SmtpReply:
        """``stuffed`` is the dot-stuffed message including the final ``.\\r\\n``."""
        self.writer.write(stuffed)
        await self.writer.drain()
        return await read_reply(self.reader)

    async def envelope(self, sender: str, recipient: str, size: int | None = None) -> None:
        param = f" SIZE={size}" if size is not None else ""
        reply = await self.command(f"MAIL FROM:<{sender}>{param}")
        assert reply.code == 250, reply
        reply = await self.command(f"RCPT TO:<{recipient}>")
        assert reply.code == 250, reply
        reply = await self.command("DATA")
        assert reply.code == 354, reply

    async def send_message(
        self, message: bytes, sender: str = "sender@client.test", rcpt: str = "user@example.org"
    ) -> SmtpReply:
        """A whole MAIL/RCPT/DATA transaction; the reply after the final dot."""
        await self.envelope(sender, rcpt)
        return await self.send_data(dot_stuff(message))

    async def close(self) -> None:
        self.writer.close()
        with suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


def dot_stuff(message: bytes) -> bytes:
    """RFC 5321 §4.5.2 transparency, plus the end-of-data marker. ``message`` uses CRLF and
    ends with CRLF."""
    assert message.endswith(b"\r\n")
    stuffed = message.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    return stuffed + b".\r\n"


def make_message(tag: str, body_size: int) -> bytes:
    """A message with a unique Message-ID (``<tag@client.test>``) and a body of about
    ``body_size`` bytes whose lines are unique to the tag; some lines start with a dot so that
    dot-stuffing is exercised, each line stays well under 1000 octets."""
    headers = (
        f"From: Sender <sender@client.test>\r\n"
        f"To: <user@example.org>\r\n"
        f"Subject: durability {tag}\r\n"
        f"Message-ID: <{tag}@client.test>\r\n"
        f"\r\n"
    ).encode()
    lines: list[bytes] = []
    size = 0
    number = 0
    while size < body_size:
        prefix = b"." if number % 7 == 3 else b""
        line = prefix + f"{tag} line {number:08d} ".encode() + b"x" * (number % 61) + b"\r\n"
        lines.append(line)
        size += len(line)
        number += 1
    return headers + b"".join(lines)


MESSAGE_ID = re.compile(rb"^Message-ID: <([^>]+)@client\.test>\r\n", re.MULTILINE | re.IGNORECASE)


def message_tag(stored: bytes) -> str | None:
    """The tag of a message built by :func:`make_message`, from its Message-ID."""
    match = MESSAGE_ID.search(stored)
    return match.group(1).decode() if match else None


def strip_received(stored: bytes) -> bytes:
    """The stored message without the one Received: field the server prepends (its
    continuation lines start with a tab). Fails if that field is missing."""
    assert stored.startswith(b"Received: "), stored[:200]
    position = stored.index(b"\r\n") + 2
    while stored[position : position + 1] == b"\t":
        position = stored.index(b"\r\n", position) + 2
    return stored[position:]


def stored_messages(spool: Path) -> dict[str, bytes]:
    """Every queued message, by spool id, as delivery would read it."""
    found: dict[str, bytes] = {}
    for message in reader.iter_messages(spool):
        data = reader.read_message_bytes(spool, message.id)
        assert data is not None, f"{message.id} is listed but has no data"
        found[message.id] = data
    return found


def referenced_body_files(spool: Path) -> set[Path]:
    """Spill files named by a committed row in any shard, where they are in ``spool``."""
    files: set[Path] = set()
    for path in reader.shard_paths(spool):
        db = sqlite3.connect(path)
        try:
            rows = db.execute("SELECT body_file FROM messages WHERE body_file IS NOT NULL")
            files.update(reader.body_file_path(spool, row[0]) for row in rows)
        finally:
            db.close()
    return files


def spill_files(spool: Path) -> set[Path]:
    data = spool / "data"
    return {entry for entry in data.iterdir()} if data.exists() else set()


def proc_status(pid: int) -> dict[str, int]:
    """The kB figures of /proc/<pid>/status (VmRSS, VmHWM, ...)."""
    figures: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        parts = value.split()
        if len(parts) == 2 and parts[1] == "kB":
            figures[name] = int(parts[0])
    return figures


def node_config(port: int, *, workers: int = 1, spool: str = "", limits: str = "") -> str:
    """A configuration like tests.support.node's, with the [node], [spool] and
    [servers.limits] keys these tests need to set (that helper fixes ``workers = 1``)."""
    return textwrap.dedent(
        f"""
        [node]
        data_dir = "data"
        workers = {workers}
        shutdown_grace = 5
        hostname = "mx.test.example"
        {node_user_line()}

        # These tests read back what the spool holds; delivery has its own tests.
        [queue]
        deliver = false

        [spool]
        {spool}

        [[servers]]
        id = "inbound"
        listen = ["127.0.0.1:{port}"]
        local_domains = ["example.org"]

        [servers.limits]
        {limits}
        """
    )


@contextmanager
def node_with_config(
    directory: Path,
    *,
    workers: int = 1,
    spool: str = "",
    limits: str = "",
    preexec_fn: Callable[[], object] | None = None,
) -> Iterator[Node]:
    """Start ``mailwarden run`` in its own process group with :func:`node_config`; stop it
    (SIGTERM, then kill -9) afterwards. ``spool`` and ``limits`` are TOML key lines."""
    port = free_port()
    config_path = directory / "mailwarden.toml"
    config_path.write_text(node_config(port, workers=workers, spool=spool, limits=limits))
    # Appending: a restarted node keeps the first run's log before its own.
    with node_process(directory, config_path, port, preexec_fn=preexec_fn, log_mode="ab") as node:
        yield node
