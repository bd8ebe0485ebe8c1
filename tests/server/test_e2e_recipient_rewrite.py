"""Rewriting a recipient to <postmaster>, as docs/policy.md documents, is accepted and queued
(issue 10 §7: it was refused with 554), while a rewrite cannot open the relay."""

from __future__ import annotations

from pathlib import Path

from tests.server.conftest import only_message, open_greeted, send_transaction, write_script
from tests.support.node import running_node

SCRIPT = """
from mailwarden.policy.actions import Accept


async def rcpt_to(conn, tx, recipient):
    if recipient.address == "abuse@example.org":
        return Accept(recipient="Postmaster")
    if recipient.address == "forward@example.org":
        return Accept(recipient="someone@remote.example")
"""

# No trusted client: the relay rule applies to everyone.
SERVER = 'trusted_networks = ["192.0.2.0/24"]\n'


def test_rewrite_to_postmaster_is_queued_and_to_remote_stays_refused(tmp_path: Path) -> None:
    with running_node(tmp_path, server=SERVER + write_script(tmp_path, SCRIPT)) as node:
        with open_greeted(node.port) as client:
            client.ehlo()
            reply = send_transaction(
                client, "a@sender.example", ["abuse@example.org"], b"Subject: x\r\n\r\nx\r\n"
            )
            assert reply.code == 250, reply
            assert client.cmd("MAIL FROM:<a@sender.example>").code == 250
            reply = client.cmd("RCPT TO:<forward@example.org>")
            assert (reply.code, reply.text) == (554, "5.7.1 Relay access denied")
        message = only_message(node)
        assert [r.address for r in message.recipients] == ["Postmaster"]
