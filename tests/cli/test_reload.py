"""`mailwarden reload` validates as `config check` does before it signals the node: a broken
script fails the command (exit 1, file and line on its output) just as a bad key does, and the
node is not signalled, so it keeps serving with what it runs."""

from __future__ import annotations

import smtplib
import time
from pathlib import Path

from tests.support.node import Node, running_node


def policy(version: str) -> str:
    return (
        "from mailwarden.policy.actions import Accept\n\n\n"
        "async def mail_from(conn, tx, sender):\n"
        f'    return Accept(text="policy {version}")\n'
    )


BROKEN = "from mailwarden.policy.actions import Accept\n\nasync def mail_from(conn, tx)\n"


def mail_from_reply(port: int) -> str:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.test")
        code, text = client.mail("a@client.test")
    assert code == 250, text
    return text.decode()


def wait_for_log(node: Node, text: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in node.log():
        assert time.monotonic() < deadline, f"{text!r} never logged: {node.log()}"
        time.sleep(0.05)


def reload_succeeds_after(node: Node, script: Path) -> None:
    """Put a good script back and reload: the node must log exactly one reload, the good one
    (a SIGHUP sent for the broken script would have logged 'reload failed' first)."""
    script.write_text(policy("v2"))
    result = node.mailwarden("reload")
    assert result.returncode == 0, result.stderr
    wait_for_log(node, "configuration and scripts reloaded")
    assert "reload failed" not in node.log(), node.log()
    assert mail_from_reply(node.port) == "2.1.0 policy v2"


def test_reload_with_a_script_syntax_error_exits_1_and_sends_nothing(tmp_path: Path) -> None:
    script = tmp_path / "policy.py"
    script.write_text(policy("v1"))
    with running_node(tmp_path, server='script = "policy.py"\n') as node:
        script.write_text(BROKEN)
        result = node.mailwarden("reload")
        assert result.returncode == 1, (result.stdout, result.stderr)
        assert f"{script}:3: syntax error" in result.stderr, result.stderr
        assert "reload requested" not in result.stdout
        # The node keeps its running script.
        assert mail_from_reply(node.port) == "2.1.0 policy v1"
        reload_succeeds_after(node, script)


def test_reload_with_a_bad_key_exits_1_and_sends_nothing(tmp_path: Path) -> None:
    script = tmp_path / "policy.py"
    script.write_text(policy("v1"))
    with running_node(tmp_path, server='script = "policy.py"\n') as node:
        good = node.config_path.read_text()
        node.config_path.write_text(good + "\n[servers.limits]\nrecipents = 3\n")
        result = node.mailwarden("reload")
        assert result.returncode == 1, (result.stdout, result.stderr)
        assert "servers[0].limits.recipents: unknown key" in result.stderr, result.stderr
        assert f"{node.config_path.name}:" in result.stderr
        assert mail_from_reply(node.port) == "2.1.0 policy v1"
        node.config_path.write_text(good)
        reload_succeeds_after(node, script)


def test_reload_with_a_missing_script_exits_1_and_sends_nothing(tmp_path: Path) -> None:
    script = tmp_path / "policy.py"
    script.write_text(policy("v1"))
    with running_node(tmp_path, server='script = "policy.py"\n') as node:
        script.rename(tmp_path / "elsewhere.py")
        result = node.mailwarden("reload")
        assert result.returncode == 1, (result.stdout, result.stderr)
        assert "servers[0].script: expected a readable file" in result.stderr, result.stderr
        assert mail_from_reply(node.port) == "2.1.0 policy v1"
        reload_succeeds_after(node, script)
