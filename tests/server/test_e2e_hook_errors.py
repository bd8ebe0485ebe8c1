"""A hook's own TimeoutError is a script error with its traceback; the hook time limit is still
reported as a time-out (issue 10 §7: it used to log "--- Logging error ---")."""

from __future__ import annotations

from pathlib import Path

from tests.server.conftest import limits, open_greeted, wait_for_log, write_script
from tests.support.node import running_node

SCRIPT = """
import asyncio


async def mail_from(conn, tx, sender):
    if sender.address == "slow@sender.example":
        await asyncio.sleep(30)  # outlives hook_timeout
    # The script's own time limit on something it waits for.
    await asyncio.wait_for(asyncio.sleep(30), timeout=0.01)
"""


def test_own_timeout_error_is_logged_with_its_traceback(tmp_path: Path) -> None:
    script = write_script(tmp_path, SCRIPT)
    with running_node(tmp_path, server=script, body=limits(hook_timeout=1.0)) as node:
        with open_greeted(node.port) as client:
            client.ehlo()
            reply = client.cmd("MAIL FROM:<a@sender.example>")
            assert (reply.code, reply.enhanced) == (451, "4.3.0")
            wait_for_log(node, "hook mail_from raised")
            reply = client.cmd("MAIL FROM:<slow@sender.example>")
            assert (reply.code, reply.enhanced) == (451, "4.3.0")
            wait_for_log(node, "hook mail_from timed out after 1.0s")
        log = node.log()
        assert "Logging error" not in log
        raised = log[log.index("hook mail_from raised") :]
        assert "Traceback (most recent call last)" in raised
        assert "in mail_from" in raised and "TimeoutError" in raised
