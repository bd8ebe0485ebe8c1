"""Hardening over the wire: SMTP smuggling, STARTTLS injection, early talkers, hostile input."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.server.conftest import (
    RawClient,
    Reply,
    queued,
    split_received,
    stored_bytes,
    write_script,
)
from tests.support.node import Node, running_node


# Tests that never queue anything share a node per module: starting one costs more than a test.
@pytest.fixture(scope="module")
def default_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    with running_node(tmp_path_factory.mktemp("default")) as node:
        yield node


@pytest.fixture(scope="module")
def keeping_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    directory = tmp_path_factory.mktemp("keep")
    with running_node(directory, server='bare_line_endings = "keep"\n') as node:
        yield node


# Published end-of-data confusions (SEC Consult, "SMTP Smuggling", 2023; Postfix and Sendmail
# advisories): each is an end-of-data marker to some server, and must be data here.
SMUGGLING_VECTORS = [
    b"\n.\n",
    b"\n.\r\n",
    b"\r.\n",
    b"\r.\r\n",
    b"\r\n.\n",
    b"\r\n.\r",
    b"\n.\r",
    b"\r.\r",
]
NUL_VECTOR = b"\r\n\x00.\r\n"

SMUGGLED = (
    b"MAIL FROM:<attacker@evil.example>\r\n"
    b"RCPT TO:<victim@example.org>\r\n"
    b"DATA\r\n"
    b"From: ceo@example.org\r\n"
    b"Subject: smuggled\r\n"
    b"\r\n"
    b"smuggled body\r\n"
)
OUTER_HEAD = b"From: alice@sender.example\r\nSubject: outer\r\n\r\nouter body"


def _smuggle(client: RawClient, vector: bytes) -> list[Reply]:
    """One outer transaction whose data carries a smuggled one; every reply until close."""
    client.greeting()
    client.send(
        b"EHLO client.example\r\n"
        b"MAIL FROM:<alice@sender.example>\r\n"
        b"RCPT TO:<bob@example.org>\r\n"
        b"DATA\r\n"
    )
    codes = [client.read_reply().code for _ in range(4)]
    assert codes == [250, 250, 250, 354]
    client.send(OUTER_HEAD + vector + SMUGGLED + b".\r\nQUIT\r\n")
    return [client.read_reply(), *client.replies_until_closed()]


@pytest.mark.parametrize("vector", [*SMUGGLING_VECTORS, NUL_VECTOR], ids=repr)
def test_smuggling_rejected_by_default(default_node: Node, vector: bytes) -> None:
    with RawClient(default_node.port) as client:
        final, *rest = _smuggle(client, vector)
    # One 5xx for the whole message, then QUIT's 221: the smuggled MAIL/RCPT/DATA never got
    # a reply of their own, so they were never executed as commands.
    assert (final.code, final.enhanced) == (550, "5.6.0"), final
    assert [r.code for r in rest] == [221]
    assert queued(default_node) == []  # neither the outer nor the smuggled message


@pytest.mark.parametrize("vector", SMUGGLING_VECTORS, ids=repr)
def test_smuggling_kept_as_data_when_configured(keeping_node: Node, vector: bytes) -> None:
    node = keeping_node
    with RawClient(node.port) as client:
        final, *rest = _smuggle(client, vector)
    assert final.code == 250, final
    assert [r.code for r in rest] == [221]
    messages = {m.id: m for m in queued(node)}
    assert all(m.sender == "alice@sender.example" for m in messages.values())
    (message_id,) = (i for i in messages if i in final.text)
    message = messages[message_id]
    assert [r.address for r in message.recipients] == ["bob@example.org"]
    _, stored = split_received(stored_bytes(node, message.id))
    # Kept byte for byte, only dot-unstuffed where a real CRLF starts a line (RFC 5321 §4.5.2).
    assert stored == (OUTER_HEAD + vector + SMUGGLED).replace(b"\r\n.", b"\r\n")
    assert b"MAIL FROM:<attacker@evil.example>" in stored


def test_nul_in_data_rejected_even_when_keeping_bare_line_endings(keeping_node: Node) -> None:
    before = queued(keeping_node)
    with RawClient(keeping_node.port) as client:
        assert [r.code for r in _smuggle(client, NUL_VECTOR)] == [550, 221]
    assert queued(keeping_node) == before


def test_session_usable_after_rejected_smuggling(tmp_path: Path) -> None:
    """The refusal ends only that transaction: the client can send a clean message next."""
    with running_node(tmp_path) as node, RawClient(node.port) as client:
        client.greeting()
        client.ehlo()
        for command in ("MAIL FROM:<a@sender.example>", "RCPT TO:<b@example.org>"):
            assert client.cmd(command).code == 250
        assert client.cmd("DATA").code == 354
        client.send(b"Subject: x\r\n\r\nbad\n.\nline\r\n.\r\n")
        reply = client.read_reply()
        assert (reply.code, reply.enhanced) == (550, "5.6.0")
        assert "smuggling" in reply.text.lower() or "bare" in reply.text.lower()
        assert client.cmd("RCPT TO:<b@example.org>").code == 503  # transaction is gone
        for command in ("MAIL FROM:<a@sender.example>", "RCPT TO:<b@example.org>"):
            assert client.cmd(command).code == 250
        assert client.cmd("DATA").code == 354
        client.send(b"Subject: y\r\n\r\ngood\r\n.\r\n")
        assert client.read_reply().code == 250
        (message,) = queued(node)
        assert stored_bytes(node, message.id).endswith(b"\r\n\r\ngood\r\n")


# --- STARTTLS command injection (CVE-2011-0411 family) ---------------------------------------


def test_starttls_injection_discarded_and_session_reset(
    tmp_path: Path, tls_keys: str, client_context: ssl.SSLContext
) -> None:
    with running_node(tmp_path, server=tls_keys) as node, RawClient(node.port) as client:
        client.greeting()
        client.ehlo()
        # The injected commands travel in the same segment as STARTTLS, in plaintext.
        client.send(b"STARTTLS\r\nRSET\r\nMAIL FROM:<injected@evil.example>\r\n")
        reply = client.read_reply()
        assert reply.code == 220
        # A reply to the injected RSET would sit in front of the TLS handshake and break it.
        client.starttls(client_context)
        # After the handshake: no answer to the injected commands, and EHLO is needed again.
        reply = client.cmd("MAIL FROM:<alice@sender.example>")
        assert (reply.code, reply.enhanced) == (503, "5.5.1"), reply
        ehlo = client.ehlo()
        assert "STARTTLS" not in ehlo.lines
        assert client.cmd("MAIL FROM:<alice@sender.example>").code == 250
        assert client.cmd("RCPT TO:<bob@example.org>").code == 250
        assert client.cmd("DATA").code == 354
        client.send(b"Subject: tls\r\n\r\nover tls\r\n.\r\n")
        assert client.read_reply().code == 250
        (message,) = queued(node)
        assert message.sender == "alice@sender.example"


def test_starttls_resets_open_transaction(
    tmp_path: Path, tls_keys: str, client_context: ssl.SSLContext
) -> None:
    with running_node(tmp_path, server=tls_keys) as node, RawClient(node.port) as client:
        client.greeting()
        client.ehlo()
        assert client.cmd("MAIL FROM:<before@sender.example>").code == 250
        assert client.cmd("STARTTLS").code == 220
        client.starttls(client_context)
        client.ehlo()
        # The sender given in plaintext is forgotten (RFC 3207 §4.2).
        reply = client.cmd("RCPT TO:<bob@example.org>")
        assert reply.code == 503
        assert queued(node) == []


# --- early talkers ----------------------------------------------------------------------------

SLOW_CONNECT = """
import asyncio
from pathlib import Path

async def connect(conn):
    # The window in which an impatient client talks first; only once the test asks for it,
    # so that the start-up probe is greeted at once.
    if (Path(__file__).parent / "slow-connect").exists():
        await asyncio.sleep(0.5)
"""


def test_early_talker_gets_554_and_is_disconnected(tmp_path: Path) -> None:
    script = write_script(tmp_path, SLOW_CONNECT)
    with running_node(tmp_path, server=script) as node:
        (tmp_path / "slow-connect").touch()
        with RawClient(node.port) as client:
            client.send(b"EHLO early.example\r\nMAIL FROM:<spam@evil.example>\r\n")
            reply = client.read_reply()
            assert (reply.code, reply.enhanced) == (554, "5.5.0"), reply
            assert client.read_until_closed() == b""  # nothing else, and the server hung up


def test_early_talker_allowed_when_configured(tmp_path: Path) -> None:
    script = write_script(tmp_path, SLOW_CONNECT)
    server = script + "reject_early_talkers = false\n"
    with running_node(tmp_path, server=server) as node:
        (tmp_path / "slow-connect").touch()
        with RawClient(node.port) as client:
            client.send(b"EHLO early.example\r\n")
            assert client.read_reply().code == 220
            assert client.read_reply().code == 250


def test_greeting_delay_opens_the_early_talker_window(tmp_path: Path) -> None:
    # No script at all: the configured pause before the 220 is the only window.
    with running_node(tmp_path, server="greeting_delay = 0.5\n") as node:
        with RawClient(node.port) as client:
            client.send(b"EHLO early.example\r\n")
            reply = client.read_reply()
            assert (reply.code, reply.enhanced) == (554, "5.5.0"), reply
            assert client.read_until_closed() == b""
        with RawClient(node.port) as patient:  # a client that waits is greeted normally
            assert patient.read_reply().code == 220


# --- hostile input: clear 5xx with an enhanced code, nothing echoed raw -------------------------

HOSTILE = [
    # (command bytes, expected code, expected enhanced code)
    (b"EHLO a\x00b", 500, "5.5.2"),
    (b"MAIL FROM:<\xff\xfe@sender.example>", 500, "5.5.2"),
    (b"MAIL FROM:<\xc3(@sender.example>", 500, "5.5.2"),
    ("MAIL FROM:<jøran@sender.example>".encode(), 553, "5.6.7"),
    (b"MAIL FROM:<a@@sender.example>", 501, None),
    (b"MAIL FROM:<no-at-sign>", 501, None),
    (b"MAIL FROM:alice@sender.example <x>", 501, None),
    (b"MAIL FROM:<alice@sender.example> SIZE=lots", 501, "5.5.4"),
    (b"MAIL FROM:<alice@sender.example> SIZE=\xc2\xb2", 553, "5.6.7"),
    (b"MAIL FROM:<alice@sender.example> BODY=9BIT", 555, "5.5.4"),
    (b"MAIL FROM:<alice@sender.example> RET=ALL", 501, "5.5.4"),
    (b"MAIL FROM:<alice@sender.example> X\x1b[2J=1", 501, "5.5.4"),
    (b"MAIL FROM:<alice@sender.example> <script>=1", 501, "5.5.4"),
    (b"EHLO <script>alert(1)</script>", 501, "5.5.4"),
    (b"EHLO bad\x1b[31mname", 501, "5.5.4"),
    (b"X\x1b]0;pwned\x07", 500, "5.5.1"),
    (b"MAIL FROM:<alice@sender.example> XFORWARD=1", 555, "5.5.4"),
]


@pytest.mark.parametrize(("command", "code", "enhanced"), HOSTILE, ids=repr)
def test_hostile_input_gets_clear_5xx_never_echoed_raw(
    default_node: Node, command: bytes, code: int, enhanced: str | None
) -> None:
    node = default_node
    with RawClient(node.port) as client:
        client.greeting()
        if not command.startswith(b"EHLO"):
            client.ehlo()
        reply = client.cmd(command)
        assert reply.code == code, reply
        assert reply.enhanced is not None and reply.enhanced[0] == "5"
        if enhanced is not None:
            assert reply.enhanced == enhanced, reply
        # The session survives and stays in sync.
        assert client.cmd("NOOP").code == 250
        assert client.cmd("QUIT").code == 221
    # Every byte the server sent is printable ASCII in CRLF-terminated lines: no control
    # character, no raw 8-bit byte, no fragment of the hostile input echoed as it came.
    for line in client.received.split(b"\r\n")[:-1]:
        assert all(0x20 <= byte < 0x7F for byte in line), line
    assert b"<script>" not in client.received
    assert queued(node) == []


def test_hostile_rcpt_input(default_node: Node) -> None:
    node = default_node
    with RawClient(node.port) as client:
        client.greeting()
        client.ehlo()
        assert client.cmd("MAIL FROM:<alice@sender.example>").code == 250
        cases = [
            (b"RCPT TO:<bob\x00@example.org>", 500),
            (b"RCPT TO:<\xe9@example.org>", 500),
            ("RCPT TO:<bjørn@example.org>".encode(), 553),  # no SMTPUTF8 on MAIL
            (b"RCPT TO:<bob@example.org> NOTIFY=SOMETIMES", 501),
            (b"RCPT TO:<bob@example.org> ORCPT=garbage", 501),
            (b"RCPT TO:<bob@example.org> FOO=\x1b", 501),
            (b"RCPT TO:<bob@[999.1.1.1]>", 501),
        ]
        for command, code in cases:
            reply = client.cmd(command)
            assert reply.code == code, (command, reply)
            assert reply.enhanced is not None and reply.enhanced[0] == "5", reply
        assert client.cmd("RSET").code == 250
    for line in client.received.split(b"\r\n")[:-1]:
        assert all(0x20 <= byte < 0x7F for byte in line), line
    assert queued(node) == []


def test_eight_bit_sender_accepted_with_smtputf8(tmp_path: Path) -> None:
    with running_node(tmp_path) as node, RawClient(node.port) as client:
        client.greeting()
        client.ehlo()
        reply = client.cmd("MAIL FROM:<jøran@sender.example> SMTPUTF8 BODY=8BITMIME".encode())
        assert reply.code == 250, reply
        assert client.cmd("RCPT TO:<bjørn@example.org>".encode()).code == 250


def test_refused_bdat_chunk_is_never_read_as_commands(default_node: Node) -> None:
    """RFC 3030 §2: a BDAT refused (here: no transaction) still has its chunk consumed; the
    commands hidden in it are never executed."""
    chunk = b"MAIL FROM:<evil@evil.example>\r\nQUIT\r\n"
    with RawClient(default_node.port) as client:
        client.greeting()
        client.ehlo()
        client.send(b"BDAT %d LAST\r\n" % len(chunk) + chunk)
        reply = client.read_reply()
        assert (reply.code, reply.enhanced) == (503, "5.5.1"), reply
        assert client.cmd("NOOP").code == 250  # no 250 for MAIL, no 221 for QUIT before it
        assert client.cmd("RCPT TO:<b@example.org>").code == 503  # MAIL never ran
    assert queued(default_node) == []


@pytest.mark.parametrize("command", [b"BDAT", b"BDAT x LAST", b"BDAT 10 NOW", b"BDAT -1"])
def test_bad_bdat_syntax_closes(default_node: Node, command: bytes) -> None:
    """Without a size the chunk's end is unknown: answer, then hang up rather than read the
    chunk as commands."""
    with RawClient(default_node.port) as client:
        client.greeting()
        client.ehlo()
        client.send(command + b"\r\nQUIT\r\n")
        reply = client.read_reply()
        assert (reply.code, reply.enhanced) == (501, "5.5.4"), reply
        closing = client.read_reply()
        assert closing.code == 421, closing
        assert client.read_until_closed() == b""
