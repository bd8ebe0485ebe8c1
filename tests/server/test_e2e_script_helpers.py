"""A policy script imports a helper module beside it, on a real node: two listeners whose
scripts sit in different directories each get their own same-named helper, and a reload after
editing one helper serves the new helper to new connections."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from tests.server.conftest import RawClient, wait_for_log
from tests.support.node import free_port, running_node

POLICY = """
from mailwarden.policy.actions import Accept

import rules


async def mail_from(conn, tx, sender):
    return Accept(text=rules.TEXT)
"""


def write_listener(directory: Path, text: str) -> None:
    directory.mkdir()
    (directory / "policy.py").write_text(POLICY)
    (directory / "rules.py").write_text(f'TEXT = "{text}"\n')


def mail_reply(port: int) -> str:
    with RawClient(port) as client:
        client.greeting()
        client.ehlo()
        return client.cmd("MAIL FROM:<a@sender.example>").text


def test_scripts_import_their_own_helpers_and_reload_picks_up_an_edit(tmp_path: Path) -> None:
    write_listener(tmp_path / "inbound", "inbound rules v1")
    write_listener(tmp_path / "submission", "submission rules")
    second_port = free_port()
    second = f"""
[[servers]]
id = "submission"
listen = ["127.0.0.1:{second_port}"]
local_domains = ["example.org"]
script = "submission/policy.py"
"""
    with running_node(tmp_path, server='script = "inbound/policy.py"\n', body=second) as node:
        assert mail_reply(node.port) == "2.1.0 inbound rules v1"
        assert mail_reply(second_port) == "2.1.0 submission rules"
        helper = tmp_path / "inbound" / "rules.py"
        before = helper.stat()
        helper.write_text('TEXT = "inbound rules v2"\n')  # same size and mtime: no stale cache
        os.utime(helper, ns=(before.st_atime_ns, before.st_mtime_ns))
        node.signal(signal.SIGHUP)
        wait_for_log(node, "configuration and scripts reloaded")
        assert mail_reply(node.port) == "2.1.0 inbound rules v2"
        assert mail_reply(second_port) == "2.1.0 submission rules"
