"""An open connection keeps the listener settings it started with across a reload: local
domains, limits and timeouts, script. New connections get the new ones (issue 10 §7: the
session read local_domains live and the sweeper applied new timeouts)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from tests.server.conftest import RawClient, limits, open_greeted, wait_for_log, write_script
from tests.support.node import running_node, write_config

POLICY = """
from mailwarden.policy.actions import Accept


async def mail_from(conn, tx, sender):
    return Accept(text="policy {version}")
"""

# 2,100 octets in short lines: over the new size limit, under the old one.
BIG_MESSAGE = b"Subject: big\r\n\r\n" + (b"x" * 68 + b"\r\n") * 30 + b".\r\n"
SERVER = 'trusted_networks = ["192.0.2.0/24"]\nscript = "policy.py"\n'


def test_open_connection_keeps_its_settings_across_a_reload(tmp_path: Path) -> None:
    write_script(tmp_path, POLICY.format(version="v1"))
    old_limits = limits(command_timeout=300, message_size=100_000)
    with (
        running_node(tmp_path, server=SERVER, body=old_limits) as node,
        open_greeted(node.port) as old,
    ):
        old.ehlo()
        # Reload: another local domain, a short idle timeout, a small size limit, script v2.
        write_script(tmp_path, POLICY.format(version="v2"))
        config = write_config(
            tmp_path,
            node.port,
            server=SERVER,
            body=limits(command_timeout=1, message_size=1000),
        )
        config.write_text(config.read_text().replace('"example.org"', '"example.net"'))
        node.signal(signal.SIGHUP)
        wait_for_log(node, "configuration and scripts reloaded")

        with RawClient(node.port) as new:
            new.greeting()
            new.ehlo()
            assert new.cmd("MAIL FROM:<a@sender.example>").text == "2.1.0 policy v2"
            assert new.cmd("RCPT TO:<b@example.org>").code == 554
            assert new.cmd("RCPT TO:<b@example.net>").code == 250
            assert new.cmd("DATA").code == 354
            new.send(BIG_MESSAGE)
            assert new.read_reply().code == 552
            # The new idle timeout applies to the new connection.
            reply = new.read_reply()
            assert (reply.code, reply.enhanced) == (421, "4.4.2")

        # The old connection has idled past the new timeout, and is still served ...
        time.sleep(2.5)
        assert old.cmd("NOOP").code == 250
        # ... with the old script, local domains and size limit.
        assert old.cmd("MAIL FROM:<a@sender.example>").text == "2.1.0 policy v1"
        assert old.cmd("RCPT TO:<b@example.net>").code == 554
        assert old.cmd("RCPT TO:<b@example.org>").code == 250
        assert old.cmd("DATA").code == 354
        old.send(BIG_MESSAGE)
        assert old.read_reply().code == 250
