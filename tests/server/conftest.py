"""Helpers for end-to-end tests against a real ``mailwarden run`` process over real sockets.

``RawClient`` speaks SMTP byte by byte (for protocol abuse that real clients refuse to send);
the spool helpers read what the node stored, the way delivery will read it.
"""

from __future__ import annotations

import json
import re
import socket
import sqlite3
import ssl
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from tests.support.node import Node, free_port, node_process, write_config

from mailwarden.spool.reader import QueuedMessage, iter_messages, read_message_bytes, shard_paths

# Generous functional timeouts: a healthy server answers in milliseconds; these only stop a
# broken one from hanging the suite.
REPLY_TIMEOUT = 15.0

_REPLY_LINE = re.compile(rb"^(\d{3})([ -])(.*)$")
_ENHANCED = re.compile(r"^([245]\.\d{1,3}\.\d{1,3}) ")


@dataclass(frozen=True)
class Reply:
    code: int
    lines: tuple[str, ...]
    raw: bytes

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    @property
    def enhanced(self) -> str | None:
        match = _ENHANCED.match(self.lines[0]) if self.lines else None
        return match.group(1) if match else None

    def __repr__(self) -> str:
        return f"Reply({self.raw!r})"


class ConnectionClosedError(AssertionError):
    """The server closed the connection where a reply was expected."""


class RawClient:
    """A plain socket speaking SMTP by hand. ``read_reply`` parses one (multi-line) reply."""

    def __init__(
        self,
        port: int,
        *,
        source: str | None = None,
        timeout: float = REPLY_TIMEOUT,
    ) -> None:
        self.sock: socket.socket | ssl.SSLSocket = socket.create_connection(
            ("127.0.0.1", port),
            timeout=timeout,
            source_address=(source, 0) if source else None,
        )
        self._buffer = b""
        self.received = b""  # every byte the server sent, for "never echoed" checks

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        if not chunk:
            return False
        self.received += chunk
        self._buffer += chunk
        return True

    def read_line(self) -> bytes:
        while b"\r\n" not in self._buffer:
            if not self._fill():
                raise ConnectionClosedError(f"connection closed; unread: {self._buffer!r}")
        line, _, self._buffer = self._buffer.partition(b"\r\n")
        return line

    def read_reply(self) -> Reply:
        lines: list[str] = []
        raw = b""
        while True:
            line = self.read_line()
            raw += line + b"\r\n"
            match = _REPLY_LINE.match(line)
            assert match is not None, f"malformed reply line {line!r}"
            lines.append(match.group(3).decode("utf-8"))
            if match.group(2) == b" ":
                return Reply(int(match.group(1)), tuple(lines), raw)

    def cmd(self, line: bytes | str) -> Reply:
        if isinstance(line, str):
            line = line.encode()
        self.send(line + b"\r\n")
        return self.read_reply()

    def greeting(self) -> Reply:
        reply = self.read_reply()
        assert reply.code == 220, reply
        return reply

    def ehlo(self, name: str = "client.example") -> Reply:
        reply = self.cmd(f"EHLO {name}")
        assert reply.code == 250, reply
        return reply

    def replies_until_closed(self) -> list[Reply]:
        """Every reply still to come, up to the server closing the connection."""
        out: list[Reply] = []
        while True:
            try:
                out.append(self.read_reply())
            except ConnectionClosedError:
                assert not self._buffer, f"partial reply before close: {self._buffer!r}"
                return out

    def read_until_closed(self) -> bytes:
        """Everything the server still sends before it closes the connection (EOF or reset).
        A server that never closes makes this fail with the socket timeout."""
        try:
            while self._fill():
                pass
        except ConnectionResetError:
            pass
        rest, self._buffer = self._buffer, b""
        return rest

    def starttls(self, context: ssl.SSLContext, server_hostname: str = "mx.test.example") -> None:
        assert not self._buffer, f"plaintext left before the handshake: {self._buffer!r}"
        self.sock = context.wrap_socket(self.sock, server_hostname=server_hostname)


def send_transaction(
    client: RawClient,
    sender: str,
    recipients: list[str],
    data: bytes,
) -> Reply:
    """MAIL, RCPT…, DATA, the (already dot-stuffed) data and the end marker; the final reply."""
    assert client.cmd(f"MAIL FROM:<{sender}>").code == 250
    for recipient in recipients:
        reply = client.cmd(f"RCPT TO:<{recipient}>")
        assert reply.code == 250, reply
    assert client.cmd("DATA").code == 354
    client.send(data + b".\r\n")
    return client.read_reply()


# --- the spool --------------------------------------------------------------------------------


def queued(node: Node) -> list[QueuedMessage]:
    """Every committed message in the node's spool."""
    return list(iter_messages(node.spool))


def stored_bytes(node: Node, message_id: str) -> bytes:
    data = read_message_bytes(node.spool, message_id)
    assert data is not None, f"{message_id} is not in the spool"
    return data


def sender_params(node: Node, message_id: str) -> dict[str, Any]:
    """The MAIL FROM parameters stored with a message (for DSN: RET, ENVID)."""
    for path in shard_paths(node.spool):
        db = sqlite3.connect(path)
        try:
            row = db.execute(
                "SELECT sender_params FROM messages WHERE id = ?", (message_id,)
            ).fetchone()
        finally:
            db.close()
        if row is not None:
            return dict(json.loads(row[0]))
    raise AssertionError(f"{message_id} is not in the spool")


def split_received(data: bytes) -> tuple[bytes, bytes]:
    """The prepended Received: field (with its continuation lines) and everything after it."""
    assert data.startswith(b"Received: "), data[:80]
    end = 0
    while True:
        end = data.index(b"\r\n", end) + 2
        if data[end : end + 1] not in (b" ", b"\t"):
            return data[:end], data[end:]


def only_message(node: Node) -> QueuedMessage:
    messages = queued(node)
    assert len(messages) == 1, messages
    return messages[0]


# --- waiting on the node without timing assertions ----------------------------------------------


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = REPLY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def wait_for_log(node: Node, text: str, count: int = 1) -> None:
    wait_until(lambda: node.log().count(text) >= count, f"{text!r} in the node log")


def open_greeted(port: int, source: str | None = None, attempts: int = 100) -> RawClient:
    """A connection that got its 220. Retries while the server still counts an earlier,
    already closed connection (the start-up probe) against its limits."""
    last: Reply | None = None
    for _ in range(attempts):
        client = RawClient(port, source=source)
        reply = client.read_reply()
        if reply.code == 220:
            return client
        client.close()
        last = reply
        time.sleep(0.05)
    raise AssertionError(f"never greeted: {last}")


# --- scripts and TLS --------------------------------------------------------------------------


def write_script(directory: Path, source: str, name: str = "policy.py") -> str:
    """Write a policy script next to the config; the ``[[servers]]`` key that selects it."""
    (directory / name).write_text(textwrap.dedent(source))
    return f'script = "{name}"\n'


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_keys(tmp_path: Path, ca: trustme.CA) -> str:
    """Certificate and key files for the node; the ``[[servers]]`` keys that select them."""
    cert = ca.issue_cert("mx.test.example", "127.0.0.1")
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    return 'tls_certificate = "cert.pem"\ntls_key = "key.pem"\n'


@pytest.fixture
def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture
def ca_file(tmp_path: Path, ca: trustme.CA) -> Path:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


def limits(**values: object) -> str:
    """A ``[servers.limits]`` table for ``running_node(body=...)``."""
    lines = ["[servers.limits]"]
    for key, value in values.items():
        lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


@contextmanager
def running_edited_node(
    directory: Path, edit: Callable[[str], str], *, server: str = "", body: str = ""
) -> Iterator[Node]:
    """Like ``running_node``, with the generated config text passed through ``edit`` first
    (for ``[node]`` keys, which ``running_node`` fixes)."""
    port = free_port()
    config_path = write_config(directory, port, body=body, server=server)
    config_path.write_text(edit(config_path.read_text()))
    with node_process(directory, config_path, port) as node:
        yield node
