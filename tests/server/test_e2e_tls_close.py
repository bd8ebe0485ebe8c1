"""A STARTTLS client that closes without QUIT leaves no library noise in the node log (issue 10
§6: asyncio warned "returning true from eof_received() has no effect when using ssl")."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from tests.server.conftest import RawClient, open_greeted, wait_for_log, write_script
from tests.support.node import running_node

SCRIPT = """
import logging


async def disconnect(conn):
    logging.getLogger("policy").info("disconnected %s", conn.id)
"""


@pytest.mark.parametrize("close_notify", [True, False], ids=["close-notify", "tcp-close"])
def test_closing_a_tls_session_without_quit_logs_nothing_from_asyncio(
    tmp_path: Path, tls_keys: str, client_context: ssl.SSLContext, close_notify: bool
) -> None:
    with running_node(tmp_path, server=tls_keys + write_script(tmp_path, SCRIPT)) as node:
        client: RawClient = open_greeted(node.port)
        client.ehlo()
        assert client.cmd("STARTTLS").code == 220
        client.starttls(client_context)
        client.ehlo()
        assert client.cmd("MAIL FROM:<a@sender.example>").code == 250
        if close_notify:
            assert isinstance(client.sock, ssl.SSLSocket)
            client.sock = client.sock.unwrap()  # TLS close_notify, then TCP FIN
        client.close()
        wait_for_log(node, "disconnected", count=2)  # the start-up probe and this client
        assert node.stop() == 0
        log = node.log()
        assert "eof_received" not in log
        assert " asyncio[" not in log, log  # nothing at all from asyncio's logger
