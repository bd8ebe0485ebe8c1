"""Helpers for the CLI tests: run ``mailwarden`` as an operator would, send mail with smtplib."""

from __future__ import annotations

import json
import os
import smtplib
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.node import Node


def mailwarden(
    *args: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    drop_env: tuple[str, ...] = (),
    text: bool = True,
    prefix: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[Any]:
    """``mailwarden ARGS`` in ``cwd`` with ``env`` added to (and ``drop_env`` removed from) this
    process's environment; ``prefix`` is a command to run it under (``unshare --user``)."""
    environment = {**os.environ, **(env or {})}
    for name in drop_env:
        environment.pop(name, None)
    return subprocess.run(
        [*prefix, sys.executable, "-m", "mailwarden.cli.main", *args],
        capture_output=True,
        text=text,
        timeout=60,
        cwd=cwd,
        env=environment,
    )


def send(
    port: int, message: bytes, recipients: list[str], sender: str = "alice@client.test"
) -> str:
    """Send ``message`` (CRLF line ends) with smtplib; the spool id from the 250 reply."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.test")
        client.mail(sender)
        for recipient in recipients:
            code, reply = client.rcpt(recipient)
            assert code == 250, reply
        code, reply = client.data(message)
    assert code == 250, reply
    return reply.decode().rsplit(" ", 1)[-1]  # "2.0.0 Message queued as ID"


def split_received(stored: bytes) -> tuple[bytes, bytes]:
    """The Received: field the node prepends (with its continuation lines), and the rest."""
    assert stored.startswith(b"Received: "), stored[:80]
    end = 0
    while True:
        end = stored.index(b"\r\n", end) + 2
        if stored[end : end + 1] not in (b" ", b"\t"):
            return stored[:end], stored[end:]


def listed(node: Node) -> list[dict[str, Any]]:
    result = node.mailwarden("queue", "list", "--json")
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout))


def raw(node: Node, message_id: str, spool_config: Path | None = None) -> bytes:
    """``queue show ID --raw``: the stored bytes."""
    config = spool_config or node.config_path
    result = mailwarden("queue", "show", message_id, "--raw", "--config", str(config), text=False)
    assert result.returncode == 0, result.stderr
    return bytes(result.stdout)
