"""Interop: real clients (smtplib, aiosmtplib, swaks, a raw socket for BDAT) against a real node.

Each message must land in the spool byte for byte, behind the prepended Received: field.
"""

from __future__ import annotations

import re
import smtplib
import ssl
import subprocess
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import pytest
from tests.server.conftest import (
    RawClient,
    only_message,
    queued,
    send_transaction,
    sender_params,
    split_received,
    stored_bytes,
)
from tests.support.node import Node, running_node

KEYWORDS = ("pipelining", "size", "8bitmime", "smtputf8", "enhancedstatuscodes", "chunking", "dsn")

MESSAGE = (
    b"From: Alice <alice@sender.example>\r\n"
    b"To: Bob <bob@example.org>\r\n"
    b"Subject: interop\r\n"
    b"Message-ID: <interop-1@sender.example>\r\n"
    b"\r\n"
    b"Hello Bob,\r\n"
    b".a line that starts with a dot\r\n"
    b"\r\n"
    b"trailing spaces   \r\n"
)


def test_smtplib_ehlo_advertises_extensions_without_tls_or_auth(tmp_path: Path) -> None:
    with running_node(tmp_path) as node, smtplib.SMTP("127.0.0.1", node.port, timeout=15) as smtp:
        code, _ = smtp.ehlo("client.example")
        assert code == 250
        for keyword in KEYWORDS:
            assert smtp.has_extn(keyword), keyword
        assert smtp.esmtp_features["size"] == "52428800"
        # No certificate configured: no STARTTLS; AUTH only after TLS by default.
        assert not smtp.has_extn("starttls")
        assert not smtp.has_extn("auth")


def test_starttls_offered_with_certificate_and_auth_only_after_tls(
    tmp_path: Path, tls_keys: str, client_context: ssl.SSLContext
) -> None:
    with (
        running_node(tmp_path, server=tls_keys) as node,
        smtplib.SMTP("127.0.0.1", node.port, timeout=15) as smtp,
    ):
        smtp.ehlo("client.example")
        assert smtp.has_extn("starttls")
        assert not smtp.has_extn("auth")
        code, _ = smtp.starttls(context=client_context)
        assert code == 220
        smtp.ehlo("client.example")
        assert not smtp.has_extn("starttls")
        assert smtp.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
        for keyword in KEYWORDS:
            assert smtp.has_extn(keyword), keyword


def test_smtplib_message_lands_in_spool_byte_for_byte(tmp_path: Path) -> None:
    with running_node(tmp_path) as node, smtplib.SMTP("127.0.0.1", node.port, timeout=15) as smtp:
        smtp.ehlo("client.example")
        refused = smtp.sendmail("alice@sender.example", ["bob@example.org"], MESSAGE)
        assert refused == {}
        message = only_message(node)
        assert message.sender == "alice@sender.example"
        assert [r.address for r in message.recipients] == ["bob@example.org"]
        assert message.state == "active"
        received, rest = split_received(stored_bytes(node, message.id))
        assert rest == MESSAGE  # smtplib dot-stuffed the dot line; the server unstuffed it
        assert received.startswith(b"Received: from client.example ([127.0.0.1])\r\n")
        assert b"by mx.test.example (Mailwarden)" in received
        assert f"with ESMTP id {message.id}".encode() in received
        assert b"for <bob@example.org>;" in received
        assert b"using" not in received  # no TLS on this connection


def test_received_header_shows_tls_protocol_and_cipher(
    tmp_path: Path, tls_keys: str, client_context: ssl.SSLContext
) -> None:
    with running_node(tmp_path, server=tls_keys) as node:
        with smtplib.SMTP("127.0.0.1", node.port, timeout=15) as smtp:
            smtp.ehlo("client.example")
            smtp.starttls(context=client_context)
            smtp.ehlo("client.example")
            assert isinstance(smtp.sock, ssl.SSLSocket)
            version = smtp.sock.version()
            cipher, _, bits = smtp.sock.cipher()
            smtp.sendmail("alice@sender.example", ["bob@example.org"], MESSAGE)
        message = only_message(node)
        received, rest = split_received(stored_bytes(node, message.id))
        assert rest == MESSAGE
        assert f"(using {version} with cipher {cipher} ({bits} bits))".encode() in received
        assert f"with ESMTPS id {message.id}".encode() in received
        assert message.tls == {"protocol": version, "cipher": cipher, "bits": bits}


def test_multiple_recipients_each_stored(tmp_path: Path) -> None:
    recipients = ["one@example.org", "two@example.org", "Three@Example.org", "postmaster"]
    with running_node(tmp_path) as node, smtplib.SMTP("127.0.0.1", node.port, timeout=15) as smtp:
        assert smtp.sendmail("alice@sender.example", recipients, MESSAGE) == {}
    message = only_message(node)
    assert [r.address for r in message.recipients] == recipients
    assert all(r.state == "active" for r in message.recipients)
    received, _ = split_received(stored_bytes(node, message.id))
    assert b"for <" not in received  # RFC 5321 §4.4: "for" only with a single recipient


async def test_aiosmtplib_send(tmp_path: Path) -> None:
    message = EmailMessage()
    message["From"] = "carol@sender.example"
    message["To"] = "dave@example.org, erin@example.org"
    message["Subject"] = "aiosmtplib"
    message.set_content("Sent with aiosmtplib.\n")
    with running_node(tmp_path) as node:
        errors, response = await aiosmtplib.send(
            message, hostname="127.0.0.1", port=node.port, timeout=15, start_tls=False
        )
        assert errors == {}
        assert response.startswith("2.0.0 ")
        stored = only_message(node)
        assert stored.id in response
        assert stored.sender == "carol@sender.example"
        assert [r.address for r in stored.recipients] == ["dave@example.org", "erin@example.org"]
        _, rest = split_received(stored_bytes(node, stored.id))
        assert b"Subject: aiosmtplib\r\n" in rest
        assert rest.endswith(b"\r\nSent with aiosmtplib.\r\n")


async def test_aiosmtplib_starttls(
    tmp_path: Path, tls_keys: str, client_context: ssl.SSLContext
) -> None:
    with running_node(tmp_path, server=tls_keys) as node:
        client = aiosmtplib.SMTP(
            hostname="127.0.0.1",
            port=node.port,
            timeout=15,
            tls_context=client_context,
            start_tls=False,
        )
        async with client:
            await client.ehlo()
            await client.starttls(server_hostname="mx.test.example")
            await client.ehlo()
            assert "auth" in client.esmtp_extensions
            assert "starttls" not in client.esmtp_extensions
            errors, _ = await client.sendmail("carol@sender.example", ["dave@example.org"], MESSAGE)
            assert errors == {}
        stored = only_message(node)
        assert stored.tls is not None and stored.tls["protocol"].startswith("TLS")


def test_swaks_with_pipelining(tmp_path: Path) -> None:
    data_file = tmp_path / "message.eml"
    # swaks always adds CRLF before the end marker: give it the message without its last one.
    data_file.write_bytes(MESSAGE.removesuffix(b"\r\n"))
    with running_node(tmp_path) as node:
        result = subprocess.run(
            [
                "swaks",
                "--server",
                "127.0.0.1",
                "--port",
                str(node.port),
                "--helo",
                "swaks.example",
                "--from",
                "frank@sender.example",
                "--to",
                "grace@example.org,heidi@example.org",
                "--pipeline",
                "--data",
                str(data_file),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        # swaks really pipelined: its transcript shows the grouped commands.
        assert "PIPELINING" in result.stdout
        stored = only_message(node)
        assert stored.sender == "frank@sender.example"
        assert [r.address for r in stored.recipients] == ["grace@example.org", "heidi@example.org"]
        received, rest = split_received(stored_bytes(node, stored.id))
        assert rest == MESSAGE
        assert received.startswith(b"Received: from swaks.example ([127.0.0.1])")


def test_swaks_starttls(tmp_path: Path, tls_keys: str, ca_file: Path) -> None:
    with running_node(tmp_path, server=tls_keys) as node:
        result = subprocess.run(
            [
                "swaks",
                "--server",
                "127.0.0.1",
                "--port",
                str(node.port),
                "--from",
                "frank@sender.example",
                "--to",
                "grace@example.org",
                "--tls",
                "--tls-verify",
                "--tls-ca-path",
                str(ca_file),
                "--tls-sni",
                "mx.test.example",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        stored = only_message(node)
        assert stored.tls is not None
        received, _ = split_received(stored_bytes(node, stored.id))
        assert f"(using {stored.tls['protocol']} with cipher {stored.tls['cipher']}".encode() in (
            received
        )


def test_pipelined_transaction_replies_in_order(tmp_path: Path) -> None:
    """RFC 2920: a whole transaction in one write; one reply per command, in order."""
    with running_node(tmp_path) as node, RawClient(node.port) as client:
        client.greeting()
        client.send(
            b"EHLO client.example\r\n"
            b"MAIL FROM:<alice@sender.example>\r\n"
            b"RCPT TO:<bob@example.org>\r\n"
            b"RCPT TO:<nobody@elsewhere.invalid>\r\n"  # trusted network: allowed to relay
            b"RCPT TO:<bad address>\r\n"
            b"DATA\r\n"
        )
        codes = [client.read_reply().code for _ in range(5)]
        assert codes == [250, 250, 250, 250, 501]
        assert client.read_reply().code == 354
        client.send(MESSAGE + b".\r\nQUIT\r\n")
        assert client.read_reply().code == 250
        assert client.read_reply().code == 221
        stored = only_message(node)
        assert [r.address for r in stored.recipients] == [
            "bob@example.org",
            "nobody@elsewhere.invalid",
        ]


def test_bdat_chunks_stored_without_dot_unstuffing(tmp_path: Path) -> None:
    """RFC 3030: BDAT chunks are taken as they are (a leading dot stays); DATA after BDAT 503."""
    first = b"Subject: chunks\r\n\r\n..two dots stay\r\n"
    second = b".\r\nnot an end marker\r\n"
    with running_node(tmp_path) as node, RawClient(node.port) as client:
        client.greeting()
        client.ehlo()
        assert client.cmd("MAIL FROM:<alice@sender.example>").code == 250
        assert client.cmd("RCPT TO:<bob@example.org>").code == 250
        client.send(b"BDAT %d\r\n" % len(first) + first)
        assert client.read_reply().code == 250
        reply = client.cmd("DATA")
        assert (reply.code, reply.enhanced) == (503, "5.5.1")
        client.send(b"BDAT %d LAST\r\n" % len(second) + second)
        reply = client.read_reply()
        assert reply.code == 250, reply
        stored = only_message(node)
        assert stored.id in reply.text
        received, rest = split_received(stored_bytes(node, stored.id))
        assert rest == first + second
        assert b"with ESMTP id" in received


def test_eight_bit_body(tmp_path: Path) -> None:
    body = "Subject: 8bit\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nGrüße, Ωμέγα ✓\r\n"
    data = body.encode()
    with running_node(tmp_path) as node, smtplib.SMTP("127.0.0.1", node.port, timeout=15) as smtp:
        smtp.ehlo("client.example")
        smtp.sendmail("alice@sender.example", ["bob@example.org"], data, ["BODY=8BITMIME"])
        stored = only_message(node)
        assert split_received(stored_bytes(node, stored.id))[1] == data
        assert sender_params(node, stored.id)["BODY"] == "8BITMIME"


def test_smtputf8_addresses(tmp_path: Path) -> None:
    message = EmailMessage()
    message["From"] = "jøran@bøker.example"
    message["To"] = "ñandú@example.org"
    message["Subject"] = "UTF-8 envelope"
    message.set_content("Hei!\n")
    with running_node(tmp_path) as node, smtplib.SMTP("127.0.0.1", node.port, timeout=15) as smtp:
        smtp.ehlo("client.example")
        # smtplib adds SMTPUTF8 and BODY=8BITMIME itself for non-ASCII addresses.
        assert smtp.send_message(message) == {}
        stored = only_message(node)
        assert stored.sender == "jøran@bøker.example"
        assert [r.address for r in stored.recipients] == ["ñandú@example.org"]
        assert "SMTPUTF8" in sender_params(node, stored.id)
        received, _ = split_received(stored_bytes(node, stored.id))
        assert b"with UTF8SMTP id" in received  # RFC 6531 §3.7.4


def test_dsn_parameters_stored(tmp_path: Path) -> None:
    with running_node(tmp_path) as node, smtplib.SMTP("127.0.0.1", node.port, timeout=15) as smtp:
        smtp.ehlo("client.example")
        refused = smtp.sendmail(
            "alice@sender.example",
            ["bob@example.org", "carol@example.org"],
            MESSAGE,
            mail_options=["RET=HDRS", "ENVID=QQ314159+2Bx"],
            rcpt_options=["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;bob+2Bdsn@example.org"],
        )
        assert refused == {}
        stored = only_message(node)
        params = sender_params(node, stored.id)
        assert params["RET"] == "HDRS"
        assert params["ENVID"] == "QQ314159+2Bx"
        for recipient in stored.recipients:
            assert recipient.params["NOTIFY"] == "SUCCESS,FAILURE"
            assert recipient.params["ORCPT"] == "rfc822;bob+2Bdsn@example.org"


def test_several_transactions_on_one_connection(tmp_path: Path) -> None:
    with running_node(tmp_path) as node, smtplib.SMTP("127.0.0.1", node.port, timeout=15) as smtp:
        ids = []
        for n in range(3):
            smtp.ehlo("client.example")
            smtp.mail(f"s{n}@sender.example")
            smtp.rcpt(f"r{n}@example.org")
            code, text = smtp.data(b"Subject: %d\r\n\r\nbody %d\r\n" % (n, n))
            assert code == 250
            match = re.search(rb"queued as (\w+)", text)
            assert match is not None
            ids.append(match.group(1).decode())
        stored = {m.id: m for m in queued(node)}
        assert sorted(stored) == sorted(ids)
        for n, message_id in enumerate(ids):
            assert stored[message_id].sender == f"s{n}@sender.example"
            assert stored_bytes(node, message_id).endswith(b"\r\nbody %d\r\n" % n)


ODD_MESSAGES = [
    b"",  # DATA immediately followed by the end marker
    b"no header section at all\r\n",
    b"Subject: no body\r\n",
    b"Subject: empty body\r\n\r\n",
    b"Subject: folded\r\n\tcontinuation line\r\nX-Other: 1\r\n\r\nbody\r\n",
    b"\r\nbody after an empty header section\r\n",
    b"Subject: blank lines\r\n\r\n\r\n\r\nafter blanks\r\n\r\n",
    b"Subject: big header\r\nX-Long: "
    + b"h" * 990
    + b"\r\n"
    + b"X-Many: v\r\n" * 3000
    + b"\r\nb\r\n",
    b"Subject: big body\r\n\r\n" + (b"z" * 998 + b"\r\n") * 400,  # spills past the threshold
    b"Subject: dots\r\n\r\n.\r\n..\r\n...\r\n. \r\n",
]


@pytest.fixture(scope="module")
def shared_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    with running_node(tmp_path_factory.mktemp("shared")) as node:
        yield node


def _queued_id(reply_text: str) -> str:
    match = re.search(r"queued as (\w+)", reply_text)
    assert match is not None, reply_text
    return match.group(1)


@pytest.mark.parametrize("data", ODD_MESSAGES, ids=lambda d: repr(d[:24]))
def test_odd_messages_stored_byte_for_byte(data: bytes, shared_node: Node) -> None:
    node = shared_node
    with RawClient(node.port) as client:
        client.greeting()
        client.ehlo()
        # Dot-stuff as a client must (RFC 5321 §4.5.2).
        stuffed = b"".join(
            b"." + line if line.startswith(b".") else line
            for line in data.splitlines(keepends=True)
        )
        reply = send_transaction(client, "a@sender.example", ["b@example.org"], stuffed)
        assert reply.code == 250, reply
    message_id = _queued_id(reply.text)
    _, rest = split_received(stored_bytes(node, message_id))
    assert rest == data
    (stored,) = [m for m in queued(node) if m.id == message_id]
    assert stored.size == len(stored_bytes(node, message_id))


@pytest.mark.parametrize("chunks", [[b""], [b"", b"a\r\n"], [b"Subject: c\r\n\r\n", b"", b"x"]])
def test_bdat_odd_chunks_byte_for_byte(chunks: list[bytes], shared_node: Node) -> None:
    node = shared_node
    with RawClient(node.port) as client:
        client.greeting()
        client.ehlo()
        assert client.cmd("MAIL FROM:<a@sender.example>").code == 250
        assert client.cmd("RCPT TO:<b@example.org>").code == 250
        for index, chunk in enumerate(chunks):
            last = b" LAST" if index == len(chunks) - 1 else b""
            client.send(b"BDAT %d%s\r\n" % (len(chunk), last) + chunk)
            reply = client.read_reply()
            assert reply.code == 250, reply
    _, rest = split_received(stored_bytes(node, _queued_id(reply.text)))
    assert rest == b"".join(chunks)


def test_pipelined_transaction_then_half_close_gets_every_reply(tmp_path: Path) -> None:
    """A client that pipelines a whole transaction and QUIT, then shuts down its sending side
    (as ``nc -N`` or a batch sender does), still gets every reply and its message is queued."""
    import socket

    with running_node(tmp_path) as node:
        with socket.create_connection(("127.0.0.1", node.port), timeout=15) as sock:
            assert sock.recv(1024).startswith(b"220 ")
            sock.sendall(
                b"EHLO client.example\r\nMAIL FROM:<a@sender.example>\r\n"
                b"RCPT TO:<bob@example.org>\r\nDATA\r\n"
            )
            received = b""
            while b"354 " not in received:
                chunk = sock.recv(4096)
                assert chunk, received
                received += chunk
            stuffed = MESSAGE.replace(b"\r\n.", b"\r\n..")  # RFC 5321 §4.5.2
            sock.sendall(stuffed + b".\r\nQUIT\r\n")
            sock.shutdown(socket.SHUT_WR)
            while chunk := sock.recv(4096):
                received += chunk
        codes = [line[:3] for line in received.split(b"\r\n") if line[3:4] == b" "]
        assert codes == [b"250", b"250", b"250", b"354", b"250", b"221"], received
        message = only_message(node)
        assert split_received(stored_bytes(node, message.id))[1] == MESSAGE
