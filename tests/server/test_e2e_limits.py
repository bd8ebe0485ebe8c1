"""RFC 5321 §4.5.3 limits and timeouts, each configured small and hit over a real socket."""

from __future__ import annotations

import smtplib
from pathlib import Path

import pytest
from tests.server.conftest import (
    RawClient,
    limits,
    only_message,
    open_greeted,
    queued,
    send_transaction,
)
from tests.support.node import running_node


def test_max_recipients_452_for_extras_earlier_ones_kept(tmp_path: Path) -> None:
    recipients = [f"r{n}@example.org" for n in range(1, 6)]
    with (
        running_node(tmp_path, body=limits(recipients=3)) as node,
        smtplib.SMTP("127.0.0.1", node.port, timeout=15) as smtp,
    ):
        refused = smtp.sendmail("a@sender.example", recipients, b"Subject: n\r\n\r\nx\r\n")
        assert set(refused) == {"r4@example.org", "r5@example.org"}
        for code, text in refused.values():
            assert code == 452
            assert text.startswith(b"4.5.3")
    message = only_message(node)
    assert [r.address for r in message.recipients] == recipients[:3]


def test_size_parameter_over_limit_552_at_mail(tmp_path: Path) -> None:
    with (
        running_node(tmp_path, body=limits(message_size=1000)) as node,
        smtplib.SMTP("127.0.0.1", node.port, timeout=15) as smtp,
    ):
        smtp.ehlo("client.example")
        assert smtp.esmtp_features["size"] == "1000"
        # smtplib announces SIZE= itself because the server offers SIZE.
        with pytest.raises(smtplib.SMTPSenderRefused) as error:
            smtp.sendmail("a@sender.example", ["b@example.org"], b"x" * 2000)
        assert error.value.smtp_code == 552
        assert error.value.smtp_error.startswith(b"5.3.4")
        # A message within the limit still goes through on the same connection.
        assert (
            smtp.sendmail("a@sender.example", ["b@example.org"], b"Subject: s\r\n\r\nok\r\n") == {}
        )
    assert len(queued(node)) == 1


def test_data_over_limit_552_at_end_nothing_queued(tmp_path: Path) -> None:
    with running_node(tmp_path, body=limits(message_size=1000)) as node, RawClient(node.port) as c:
        c.greeting()
        c.ehlo()
        data = b"Subject: big\r\n\r\n" + b"0123456789" * 30 + b"\r\n"
        data = data * 5  # about 1.5 KB, no SIZE= announced
        reply = send_transaction(c, "a@sender.example", ["b@example.org"], data)
        assert (reply.code, reply.enhanced) == (552, "5.3.4"), reply
        assert queued(node) == []
        # The session is still usable.
        reply = send_transaction(
            c, "a@sender.example", ["b@example.org"], b"Subject: s\r\n\r\nx\r\n"
        )
        assert reply.code == 250
    assert len(queued(node)) == 1


def test_bdat_over_limit_552_nothing_queued(tmp_path: Path) -> None:
    with running_node(tmp_path, body=limits(message_size=1000)) as node, RawClient(node.port) as c:
        c.greeting()
        c.ehlo()
        assert c.cmd("MAIL FROM:<a@sender.example>").code == 250
        assert c.cmd("RCPT TO:<b@example.org>").code == 250
        chunk = b"y" * 1500
        c.send(b"BDAT %d LAST\r\n" % len(chunk) + chunk)
        reply = c.read_reply()
        assert reply.code == 552, reply
        assert c.cmd("NOOP").code == 250  # the chunk was consumed, not read as commands
    assert queued(node) == []


def test_command_line_limit(tmp_path: Path) -> None:
    with running_node(tmp_path) as node, RawClient(node.port) as client:
        client.greeting()
        client.ehlo()
        # Exactly 512 octets including CRLF is allowed (RFC 5321 §4.5.3.1.4)...
        line = "NOOP " + "x" * (512 - 2 - 5)
        assert client.cmd(line).code == 250
        # ...one more is not.
        reply = client.cmd(line + "x")
        assert (reply.code, reply.enhanced) == (500, "5.5.2"), reply
        reply = client.cmd("NOOP " + "y" * 5000)
        assert reply.code == 500
        assert b"yyyy" not in client.received
        assert client.cmd("NOOP").code == 250


def test_too_many_errors_421_and_close(tmp_path: Path) -> None:
    with running_node(tmp_path, body=limits(errors=3)) as node, RawClient(node.port) as client:
        client.greeting()
        client.ehlo()
        assert client.cmd("BOGUS").code == 500
        assert client.cmd("RCPT TO:<b@example.org>").code == 503
        assert client.cmd("ALSO-BOGUS").code == 500
        reply = client.read_reply()
        assert (reply.code, reply.enhanced) == (421, "4.7.0"), reply
        assert client.read_until_closed() == b""


def test_connections_per_ip(tmp_path: Path) -> None:
    body = limits(connections_per_ip=2)
    with running_node(tmp_path, body=body) as node:
        first = open_greeted(node.port)
        second = open_greeted(node.port)
        with first, second, RawClient(node.port) as third:
            reply = third.read_reply()
            assert (reply.code, reply.enhanced) == (421, "4.7.0"), reply
            assert third.read_until_closed() == b""
            # Another client address is not affected.
            with RawClient(node.port, source="127.0.0.2") as other:
                assert other.read_reply().code == 220
            # The open ones keep working.
            first.ehlo()
            assert first.cmd("QUIT").code == 221
        # Once one is gone, the address may connect again.
        with open_greeted(node.port) as again:
            again.ehlo()


def test_connections_total(tmp_path: Path) -> None:
    body = limits(connections=2)
    with running_node(tmp_path, body=body) as node:
        first = open_greeted(node.port, source="127.0.0.1")
        second = open_greeted(node.port, source="127.0.0.2")
        with first, second, RawClient(node.port, source="127.0.0.3") as third:
            reply = third.read_reply()
            assert (reply.code, reply.enhanced) == (421, "4.7.0"), reply
            assert third.read_until_closed() == b""


def test_command_timeout_421(tmp_path: Path) -> None:
    body = limits(command_timeout=1)
    with running_node(tmp_path, body=body) as node, RawClient(node.port) as client:
        client.greeting()
        client.ehlo()
        reply = client.read_reply()  # sent by the server on its own when the client idles
        assert (reply.code, reply.enhanced) == (421, "4.4.2"), reply
        assert client.read_until_closed() == b""


def test_data_timeout_421_nothing_queued(tmp_path: Path) -> None:
    body = limits(command_timeout=60, data_timeout=1)
    with running_node(tmp_path, body=body) as node, RawClient(node.port) as client:
        client.greeting()
        client.ehlo()
        assert client.cmd("MAIL FROM:<a@sender.example>").code == 250
        assert client.cmd("RCPT TO:<b@example.org>").code == 250
        assert client.cmd("DATA").code == 354
        client.send(b"Subject: stalled\r\n\r\nhalf a mess")
        reply = client.read_reply()
        assert (reply.code, reply.enhanced) == (421, "4.4.2"), reply
        assert client.read_until_closed() == b""
    assert queued(node) == []


def test_message_size_boundary(tmp_path: Path) -> None:
    with running_node(tmp_path, body=limits(message_size=1000)) as node, RawClient(node.port) as c:
        c.greeting()
        c.ehlo()
        exact = b"Subject: s\r\n\r\n" + b"a" * (1000 - 14 - 2) + b"\r\n"
        assert len(exact) == 1000
        assert c.cmd("MAIL FROM:<a@sender.example> SIZE=1000").code == 250
        assert c.cmd("RCPT TO:<b@example.org>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(exact + b".\r\n")
        assert c.read_reply().code == 250
        reply = c.cmd("MAIL FROM:<a@sender.example> SIZE=1001")
        assert (reply.code, reply.enhanced) == (552, "5.3.4")
        one_more = exact.replace(b"Subject: s", b"Subject: ss")
        reply = send_transaction(c, "a@sender.example", ["b@example.org"], one_more)
        assert reply.code == 552
    assert len(queued(node)) == 1
