"""DLP end to end: a real node whose data hook refuses a listed attachment and a card number."""

from __future__ import annotations

import hashlib
import smtplib
import textwrap
from email.message import EmailMessage
from pathlib import Path

import pytest
from tests.support.node import running_node

from mailwarden.spool.reader import iter_messages, read_message_bytes

LEAKED = b"%PDF-1.4\nquarterly figures, internal only\n%%EOF\n"
CARD = "4111-1111-1111-1111"

POLICY = """
from mailwarden.lib import dlp
from mailwarden.policy.actions import Reject

RULES = dlp.Rules(hashes=dlp.HashList.from_file({hash_file!r}), cards=True)


async def data(conn, tx, message):
    findings = dlp.check(await dlp.scan(message, max_bytes=1_000_000), RULES)
    if findings:
        first = findings[0]
        text = f"Refused by DLP: {{first.detail}} in part {{first.part}}"
        if first.snippet:
            text += f" ({{first.snippet}})"
        raise Reject(text, code=550, enhanced="5.7.1")
    return None
"""


def build(text: str, attachment: bytes | None = None) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "alice@sender.example"
    message["To"] = "bob@example.org"
    message["Subject"] = "figures"
    message.set_content(text)
    if attachment is not None:
        message.add_attachment(
            attachment, maintype="application", subtype="pdf", filename="figures.pdf"
        )
    return message


def send(port: int, message: EmailMessage) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.send_message(message)


def test_data_hook_refuses_listed_attachment_and_card_number(tmp_path: Path) -> None:
    hash_file = tmp_path / "blocked.sha256"
    hash_file.write_text(f"{hashlib.sha256(LEAKED).hexdigest()}  figures.pdf\n")
    (tmp_path / "policy.py").write_text(textwrap.dedent(POLICY.format(hash_file=str(hash_file))))
    with running_node(tmp_path, server='script = "policy.py"\n') as node:
        send(node.port, build("Figures attached, see you Monday.", b"%PDF-1.4\nother\n"))

        with pytest.raises(smtplib.SMTPDataError) as listed:
            send(node.port, build("Figures attached.", LEAKED))
        assert listed.value.smtp_code == 550
        assert b"5.7.1 Refused by DLP: sha256" in listed.value.smtp_error
        assert b"in part 2" in listed.value.smtp_error

        with pytest.raises(smtplib.SMTPDataError) as card:
            send(node.port, build(f"My card is {CARD}, expiry 12/27."))
        assert card.value.smtp_code == 550
        assert b"card number (Luhn) in part 1 (****-****-****-1111)" in card.value.smtp_error

    log = node.log()  # once stopped: the node's log writer is buffered
    # Only the clean message was accepted; the full card number was never logged.
    (queued,) = iter_messages(node.spool)
    assert b"see you Monday" in (read_message_bytes(node.spool, queued.id) or b"")
    assert "****-****-****-1111" in log  # the refusal is logged, masked
    assert CARD not in log
