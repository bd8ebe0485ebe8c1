"""call_hook tells a hook's own TimeoutError (a script error with its traceback) from the hook
time limit (a time-out), with and without a timeout of its own (issue 10 §7)."""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path

import pytest

from mailwarden.policy.context import Connection
from mailwarden.policy.runner import HookFailed, call_hook
from mailwarden.policy.script import load_script

OWN_TIMEOUT = """
import asyncio


async def connect(conn):
    await asyncio.wait_for(asyncio.sleep(30), timeout=0.01)
"""

SLOW = """
import asyncio


async def connect(conn):
    await asyncio.sleep(30)
"""


def connection() -> Connection:
    return Connection("c1", "inbound", "203.0.113.5", 40000, "192.0.2.1", 25)


@pytest.mark.parametrize("timeout", [None, 5.0], ids=["server-enforced", "own-scope"])
async def test_own_timeout_error_is_a_script_error_with_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, timeout: float | None
) -> None:
    path = tmp_path / "policy.py"
    path.write_text(textwrap.dedent(OWN_TIMEOUT))
    script = load_script(path)
    with caplog.at_level(logging.ERROR, logger="mailwarden.policy"), pytest.raises(HookFailed):
        await call_hook(script, "connect", "c1", timeout, connection())
    [record] = caplog.records
    assert record.getMessage() == "connection c1: hook connect raised"
    assert record.exc_info is not None and record.exc_info[0] is TimeoutError


async def test_hook_time_limit_is_reported_as_a_timeout(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "policy.py"
    path.write_text(textwrap.dedent(SLOW))
    script = load_script(path)
    with caplog.at_level(logging.ERROR, logger="mailwarden.policy"), pytest.raises(HookFailed):
        await call_hook(script, "connect", "c1", 0.05, connection())
    [record] = caplog.records
    assert record.getMessage() == "connection c1: hook connect timed out after 0.1s"
    assert record.exc_info is None
