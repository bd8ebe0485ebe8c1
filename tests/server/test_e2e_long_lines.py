"""Long body lines over a real socket (RFC 5321 §4.5.3.1): a real node takes a 20,000-octet
line from smtplib and stores it byte for byte; ``strict_line_length`` restores the refusal."""

from __future__ import annotations

import smtplib
from pathlib import Path

import pytest
from tests.server.conftest import limits, only_message, split_received, stored_bytes
from tests.support.node import running_node

MESSAGE = (
    b"From: <a@sender.example>\r\n"
    b"Subject: one long line\r\n"
    b"\r\n"
    b"<html>" + b"x" * 20_000 + b"</html>\r\n"
    b"." + b"y" * 3_000 + b"\r\n"  # dot-stuffed by smtplib, unstuffed by the server
    b"end\r\n"
)
SHORT = b"Subject: s\r\n\r\nok\r\n"


def test_a_20000_octet_body_line_is_accepted_and_stored_byte_for_byte(tmp_path: Path) -> None:
    with (
        running_node(tmp_path) as node,
        smtplib.SMTP("127.0.0.1", node.port, timeout=15) as smtp,
    ):
        assert smtp.sendmail("a@sender.example", ["b@example.org"], MESSAGE) == {}
    _, rest = split_received(stored_bytes(node, only_message(node).id))
    assert rest == MESSAGE


def test_strict_line_length_refuses_the_long_line_and_queues_nothing(tmp_path: Path) -> None:
    with (
        running_node(tmp_path, body=limits(strict_line_length=True)) as node,
        smtplib.SMTP("127.0.0.1", node.port, timeout=15) as smtp,
    ):
        with pytest.raises(smtplib.SMTPDataError) as error:
            smtp.sendmail("a@sender.example", ["b@example.org"], MESSAGE)
        assert error.value.smtp_code == 500
        assert error.value.smtp_error == b"5.5.2 Line too long in message data"
        # The session goes on: a message with short lines is accepted on the same connection.
        assert (
            smtp.sendmail("a@sender.example", ["b@example.org"], b"Subject: s\r\n\r\nok\r\n") == {}
        )
    _, rest = split_received(stored_bytes(node, only_message(node).id))
    assert rest == SHORT
