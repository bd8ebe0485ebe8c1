"""Scanners end to end: a real node whose data hook asks real clamd, rspamd and spamd daemons,
over real SMTP."""

from __future__ import annotations

import smtplib
import textwrap
from email.message import EmailMessage
from pathlib import Path

import pytest
from tests.support.node import running_node
from tests.support.scanners import (
    CLAMD_SIGNATURE,
    EICAR,
    GTUBE,
    ClamdServer,
    RspamdServer,
    SpamdServer,
)

from mailwarden.spool.reader import iter_messages, read_message_bytes

POLICY = """
from mailwarden.lib import ScannerError, clamav
from mailwarden.policy.actions import Defer, Reject


async def data(conn, tx, message):
    try:
        result = await clamav.scan(message)
    except ScannerError as error:
        raise Defer(f"Virus scanner unavailable: {error.reason}", code=451, enhanced="4.7.0")
    if not result.clean:
        raise Reject(f"Virus found: {result.virus}", code=554, enhanced="5.7.1")
    return None
"""


SPAM_POLICY = """
from mailwarden.lib import ScannerError, rspamd, spamassassin
from mailwarden.policy.actions import Defer, Reject


async def data(conn, tx, message):
    try:
        filtered = await rspamd.check(message, conn=conn, tx=tx)
        scored = await spamassassin.check(message)
    except ScannerError as error:
        raise Defer(f"Spam filter unavailable: {error.reason}", code=451, enhanced="4.7.0")
    if filtered.is_spam:
        raise Reject(f"Spam ({filtered.action}, rspamd)", code=550, enhanced="5.7.1")
    message.headers.add("X-Rspamd-Action", filtered.action)
    message.headers.add("X-Spam-Score", f"{scored.score:.1f} / {scored.threshold:.1f}")
    message.headers.add("X-Spam-Rules", ",".join(scored.rules) or "none")
    return None
"""


def build(text: str, attachment: bytes | None = None) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "alice@sender.example"
    message["To"] = "bob@example.org"
    message["Subject"] = "the file"
    message.set_content(text)
    if attachment is not None:
        message.add_attachment(
            attachment, maintype="application", subtype="octet-stream", filename="eicar.com"
        )
    return message


def send(port: int, message: EmailMessage) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.send_message(message)


def test_data_hook_rejects_eicar_and_defers_when_clamd_is_down(
    tmp_path: Path, clamd: ClamdServer
) -> None:
    (tmp_path / "policy.py").write_text(textwrap.dedent(POLICY))
    library = f'[library]\nclamd_address = "{clamd.socket_path}"\nscanner_timeout = 10\n'
    with running_node(tmp_path, server='script = "policy.py"\n', body=library) as node:
        send(node.port, build("The minutes, as promised."))

        with pytest.raises(smtplib.SMTPDataError) as infected:
            send(node.port, build("See attached.", EICAR))
        assert infected.value.smtp_code == 554
        assert f"5.7.1 Virus found: {CLAMD_SIGNATURE}".encode() in infected.value.smtp_error

    # The same node with clamd's socket gone: the message is deferred, not let through.
    library = f'[library]\nclamd_address = "{tmp_path / "gone.sock"}"\n'
    with running_node(tmp_path, server='script = "policy.py"\n', body=library) as node:
        with pytest.raises(smtplib.SMTPDataError) as down:
            send(node.port, build("Another clean one."))
        assert down.value.smtp_code == 451
        assert b"4.7.0 Virus scanner unavailable: cannot connect" in down.value.smtp_error

    (queued,) = iter_messages(node.spool)  # only the clean message was accepted
    assert b"The minutes, as promised." in (read_message_bytes(node.spool, queued.id) or b"")


def test_data_hook_rejects_gtube_with_rspamd_and_scores_with_spamd(
    tmp_path: Path, rspamd_daemon: RspamdServer, spamd: SpamdServer
) -> None:
    (tmp_path / "policy.py").write_text(textwrap.dedent(SPAM_POLICY))
    library = (
        f'[library]\nrspamd_url = "{rspamd_daemon.url}"\n'
        f'spamd_address = "{spamd.address}"\nscanner_timeout = 20\n'
    )
    with running_node(tmp_path, server='script = "policy.py"\n', body=library) as node:
        send(node.port, build("The minutes, as promised."))
        with pytest.raises(smtplib.SMTPDataError) as spam:
            send(node.port, build(f"Cheap watches!\n{GTUBE}\n"))
        assert spam.value.smtp_code == 550
        assert b"5.7.1 Spam (reject, rspamd)" in spam.value.smtp_error

    (queued,) = iter_messages(node.spool)
    stored = read_message_bytes(node.spool, queued.id) or b""
    assert b"X-Rspamd-Action: no action" in stored
    assert b"X-Spam-Score: " in stored and b" / 5.0" in stored
    # rspamd saw the envelope the node received: the client and both envelope addresses.
    seen = [
        line
        for line in rspamd_daemon.log().splitlines()
        if "ip: 127.0.0.1" in line and "rcpts: <bob@example.org>," in line
    ]
    assert seen and all("from: <alice@sender.example>" in line for line in seen)
