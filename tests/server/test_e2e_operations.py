"""Operating a node: reload (SIGHUP and `mailwarden reload`), graceful SIGTERM, config check,
queue list."""

from __future__ import annotations

import json
import os
import signal
import smtplib
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.server.conftest import (
    RawClient,
    limits,
    queued,
    running_edited_node,
    send_transaction,
    wait_for_log,
    wait_until,
    write_script,
)
from tests.support.node import Node, free_port, run_cli, running_node, write_config


def versioned_policy(version: str) -> str:
    # Versions of equal length: the file keeps its size across an edit, as small edits often do.
    return f"""
from mailwarden.policy.actions import Accept


async def mail_from(conn, tx, sender):
    return Accept(text="policy {version}")
"""


def _sighup(node: Node) -> None:
    node.signal(signal.SIGHUP)


def _cli_reload(node: Node) -> None:
    result = node.mailwarden("reload")
    assert result.returncode == 0, result.stderr
    assert "reload requested" in result.stdout


@pytest.mark.parametrize("reload", [_sighup, _cli_reload], ids=["SIGHUP", "mailwarden-reload"])
def test_reload_swaps_script_for_new_connections_only(
    tmp_path: Path, reload: Callable[[Node], None]
) -> None:
    script = write_script(tmp_path, versioned_policy("v1"))
    with running_node(tmp_path, server=script) as node:
        with RawClient(node.port) as old:
            old.greeting()
            old.ehlo()
            assert old.cmd("MAIL FROM:<a@sender.example>").text == "2.1.0 policy v1"
            write_script(tmp_path, versioned_policy("v2"))
            reload(node)
            wait_for_log(node, "configuration and scripts reloaded")
            # The open connection keeps working, on the script it started with.
            assert old.cmd("RCPT TO:<b@example.org>").code == 250
            assert old.cmd("DATA").code == 354
            old.send(b"Subject: during reload\r\n\r\nx\r\n.\r\n")
            assert old.read_reply().code == 250
            assert old.cmd("MAIL FROM:<a@sender.example>").text == "2.1.0 policy v1"
            # A new connection sees the new script.
            with RawClient(node.port) as new:
                new.greeting()
                new.ehlo()
                assert new.cmd("MAIL FROM:<a@sender.example>").text == "2.1.0 policy v2"
        assert len(queued(node)) == 1


def test_reload_picks_up_edit_with_same_size_and_mtime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An edit that keeps the file's size and lands in the same second (a deploy tool writing
    the file and sending SIGHUP at once) must still be seen: no stale bytecode cache."""
    monkeypatch.delenv("PYTHONDONTWRITEBYTECODE", raising=False)  # as in production
    script = write_script(tmp_path, versioned_policy("v1"))
    path = tmp_path / "policy.py"
    before = path.stat()
    with running_node(tmp_path, server=script) as node:
        write_script(tmp_path, versioned_policy("v2"))
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        node.signal(signal.SIGHUP)
        wait_for_log(node, "configuration and scripts reloaded")
        with RawClient(node.port) as client:
            client.greeting()
            client.ehlo()
            assert client.cmd("MAIL FROM:<a@sender.example>").text == "2.1.0 policy v2"


def test_reload_with_broken_script_keeps_the_old_one(tmp_path: Path) -> None:
    script = write_script(tmp_path, versioned_policy("v1"))
    with running_node(tmp_path, server=script) as node:
        broken = "from mailwarden.policy.actions import Accept\n\nasync def mail_from(conn, tx)\n"
        (tmp_path / "policy.py").write_text(broken)
        node.signal(signal.SIGHUP)
        wait_for_log(node, "reload failed")
        log = node.log()
        assert f"{tmp_path / 'policy.py'}:3: syntax error" in log
        with RawClient(node.port) as client:
            client.greeting()
            client.ehlo()
            assert client.cmd("MAIL FROM:<a@sender.example>").text == "2.1.0 policy v1"
        # Fixing the script and reloading again works.
        write_script(tmp_path, versioned_policy("v3"))
        node.signal(signal.SIGHUP)
        wait_for_log(node, "configuration and scripts reloaded")
        with RawClient(node.port) as client:
            client.greeting()
            client.ehlo()
            assert client.cmd("MAIL FROM:<a@sender.example>").text == "2.1.0 policy v3"


def test_reload_with_script_failing_at_import_keeps_the_old_one(tmp_path: Path) -> None:
    script = write_script(tmp_path, versioned_policy("v1"))
    with running_node(tmp_path, server=script) as node:
        (tmp_path / "policy.py").write_text("import os\n\nraise RuntimeError('no database')\n")
        node.signal(signal.SIGHUP)
        wait_for_log(node, "reload failed")
        assert f"{tmp_path / 'policy.py'}:3: import failed: RuntimeError: no database" in node.log()
        with RawClient(node.port) as client:
            client.greeting()
            client.ehlo()
            assert client.cmd("MAIL FROM:<a@sender.example>").text == "2.1.0 policy v1"


def test_reload_applies_new_limits(tmp_path: Path) -> None:
    with running_node(tmp_path, body=limits(recipients=5)) as node:
        write_config(tmp_path, node.port, body=limits(recipients=1))
        node.signal(signal.SIGHUP)
        wait_for_log(node, "configuration and scripts reloaded")
        with RawClient(node.port) as client:
            client.greeting()
            client.ehlo()
            assert client.cmd("MAIL FROM:<a@sender.example>").code == 250
            assert client.cmd("RCPT TO:<b@example.org>").code == 250
            assert client.cmd("RCPT TO:<c@example.org>").code == 452


def test_reload_with_bad_config_keeps_running(tmp_path: Path) -> None:
    with running_node(tmp_path, body=limits(recipients=5)) as node:
        write_config(tmp_path, node.port, body="[servers.limits]\nrecipients = 0\n")
        node.signal(signal.SIGHUP)
        wait_for_log(node, "reload failed")
        assert "servers[0].limits.recipients" in node.log()
        with smtplib.SMTP("127.0.0.1", node.port, timeout=15) as smtp:
            assert smtp.noop()[0] == 250


# --- graceful shutdown ------------------------------------------------------------------------


def test_sigterm_lets_transaction_in_flight_finish(tmp_path: Path) -> None:
    with running_node(tmp_path) as node:
        busy = RawClient(node.port)
        idle = RawClient(node.port)
        with busy, idle:
            busy.greeting()
            busy.ehlo()
            idle.greeting()
            idle.ehlo()
            assert busy.cmd("MAIL FROM:<a@sender.example>").code == 250
            assert busy.cmd("RCPT TO:<b@example.org>").code == 250
            assert busy.cmd("DATA").code == 354
            busy.send(b"Subject: in flight\r\n\r\nfirst half, ")
            node.signal(signal.SIGTERM)
            wait_for_log(node, "stopping")
            # The idle session is told at once (RFC 5321 §3.8: 421 before closing).
            reply = idle.read_reply()
            assert (reply.code, reply.enhanced) == (421, "4.3.2"), reply
            assert idle.read_until_closed() == b""
            # New connections are no longer accepted.
            with pytest.raises(OSError), RawClient(node.port, timeout=5) as late:
                late.greeting()
            # The transaction in flight completes and is acknowledged...
            busy.send(b"second half\r\n.\r\n")
            reply = busy.read_reply()
            assert reply.code == 250, reply
            # ...and then the session is closed with 421.
            reply = busy.read_reply()
            assert (reply.code, reply.enhanced) == (421, "4.3.2"), reply
            assert busy.read_until_closed() == b""
        assert node.process.wait(timeout=30) == 0
    (message,) = queued(node)
    assert message.sender == "a@sender.example"


def test_sigterm_grace_over_closes_stalled_transaction(tmp_path: Path) -> None:
    def short_grace(text: str) -> str:
        return text.replace("shutdown_grace = 5\n", "shutdown_grace = 1\n")

    with running_edited_node(tmp_path, short_grace) as node, RawClient(node.port) as stalled:
        stalled.greeting()
        stalled.ehlo()
        assert stalled.cmd("MAIL FROM:<a@sender.example>").code == 250
        assert stalled.cmd("RCPT TO:<b@example.org>").code == 250
        assert stalled.cmd("DATA").code == 354
        stalled.send(b"Subject: never finished\r\n\r\n")
        node.signal(signal.SIGTERM)
        reply = stalled.read_reply()
        assert (reply.code, reply.enhanced) == (421, "4.3.2"), reply
        assert stalled.read_until_closed() == b""
        assert node.process.wait(timeout=30) == 0
    assert queued(node) == []


# --- mailwarden config check --------------------------------------------------------------------


def _config(tmp_path: Path, server: str = "", body: str = "") -> Path:
    return write_config(tmp_path, free_port(), server=server, body=body)


def test_config_check_good(tmp_path: Path) -> None:
    script = write_script(tmp_path, versioned_policy("v1"))
    path = _config(tmp_path, server=script, body=limits(recipients=3))
    result = run_cli("config", "check", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def _line_of(path: Path, text: str) -> int:
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if text in line:
            return number
    raise AssertionError(f"{text!r} not in {path}")


@pytest.mark.parametrize(
    ("body", "key", "offending"),
    [
        ("[servers.limits]\nrecipents = 3\n", "servers[0].limits.recipents", "recipents"),
        ('[servers.limits]\nrecipients = "many"\n', "servers[0].limits.recipients", "recipients"),
        ("[servers.limits]\ncommand_line = 100\n", "servers[0].limits.command_line", "command_"),
    ],
)
def test_config_check_bad_names_key_and_line(
    tmp_path: Path, body: str, key: str, offending: str
) -> None:
    path = _config(tmp_path, body=body)
    result = run_cli("config", "check", "--config", str(path))
    assert result.returncode == 1
    assert f"{path.name}:{_line_of(path, offending)}: {key}" in result.stderr, result.stderr


def test_config_check_unknown_server_key(tmp_path: Path) -> None:
    path = _config(tmp_path, server="bare_line_ending = 'keep'\n")
    result = run_cli("config", "check", "--config", str(path))
    assert result.returncode == 1
    assert f":{_line_of(path, 'bare_line_ending')}: servers[0].bare_line_ending" in result.stderr
    assert "unknown key" in result.stderr


def test_config_check_missing_script_names_key(tmp_path: Path) -> None:
    path = _config(tmp_path, server='script = "missing.py"\n')
    result = run_cli("config", "check", "--config", str(path))
    assert result.returncode == 1
    assert f":{_line_of(path, 'missing.py')}: servers[0].script" in result.stderr, result.stderr


def test_config_check_script_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "policy.py").write_text(
        textwrap.dedent(
            """\
            from mailwarden.policy.actions import Accept


            async def data(conn, tx, message)
                return Accept()
            """
        )
    )
    path = _config(tmp_path, server='script = "policy.py"\n')
    result = run_cli("config", "check", "--config", str(path))
    assert result.returncode == 1
    assert f"{tmp_path / 'policy.py'}:4: syntax error" in result.stderr


def test_config_check_hook_with_wrong_signature(tmp_path: Path) -> None:
    write_script(tmp_path, "\n\nasync def rcpt_to(conn, recipient):\n    return None\n")
    path = _config(tmp_path, server='script = "policy.py"\n')
    result = run_cli("config", "check", "--config", str(path))
    assert result.returncode == 1
    stderr = result.stderr
    assert f"{tmp_path / 'policy.py'}:3: hook rcpt_to" in stderr


def test_run_refuses_broken_script(tmp_path: Path) -> None:
    write_script(tmp_path, "async def connect(conn:\n")
    path = _config(tmp_path, server='script = "policy.py"\n')
    result = run_cli("run", "--config", str(path))
    assert result.returncode == 1
    assert f"{tmp_path / 'policy.py'}:1" in result.stderr


# --- mailwarden queue list ----------------------------------------------------------------------


def test_queue_list_json(tmp_path: Path) -> None:
    script = write_script(
        tmp_path,
        """
        from mailwarden.policy.actions import Hold

        async def data(conn, tx, message):
            if message.headers.get("Subject") == "hold me":
                return Hold("needs review")
        """,
    )
    with running_node(tmp_path, server=script) as node, RawClient(node.port) as client:
        client.greeting()
        client.ehlo()
        first = send_transaction(
            client,
            "alice@sender.example",
            ["b@example.org", "c@example.org"],
            b"Subject: hi\r\n\r\n1\r\n",
        )
        second = send_transaction(client, "", ["d@example.org"], b"Subject: hold me\r\n\r\n2\r\n")
        assert first.code == second.code == 250
        result = node.mailwarden("queue", "list", "--json")
        assert result.returncode == 0, result.stderr
        listed = {entry["id"]: entry for entry in json.loads(result.stdout)}
        assert len(listed) == 2
        by_sender = {entry["sender"]: entry for entry in listed.values()}
        active = by_sender["alice@sender.example"]
        assert active["id"] in first.text
        assert active["state"] == "active"
        assert [r["address"] for r in active["recipients"]] == ["b@example.org", "c@example.org"]
        assert all(r["state"] == "active" for r in active["recipients"])
        held = by_sender[""]  # the null sender <> of a bounce
        assert held["id"] in second.text
        assert held["state"] == "held"
        assert held["recipients"][0]["reason"] == "needs review"
        # The table form lists the same ids.
        table = node.mailwarden("queue", "list")
        assert table.returncode == 0
        assert "2 message(s)" in table.stdout


def test_failed_reload_changes_no_listener(tmp_path: Path, tls_keys: str) -> None:
    """A reload that fails on the second listener (unusable certificate) must not have already
    switched the first one: all or nothing."""
    write_script(tmp_path, versioned_policy("v1"))
    second_port = free_port()
    second = textwrap.dedent(
        f"""
        [[servers]]
        id = "second"
        listen = ["127.0.0.1:{second_port}"]
        local_domains = ["example.org"]
        {tls_keys.splitlines()[0]}
        {tls_keys.splitlines()[1]}
        """
    )
    with running_node(tmp_path, server='script = "policy.py"\n', body=second) as node:
        write_script(tmp_path, versioned_policy("v2"))
        (tmp_path / "cert.pem").write_text("not a certificate\n")
        node.signal(signal.SIGHUP)
        wait_for_log(node, "reload failed")
        # The key and both files, in the form of a configuration error line.
        problem = (
            f"servers[second].tls_certificate: cannot use {tmp_path / 'cert.pem'}"
            f" with tls_key {tmp_path / 'key.pem'}"
        )
        assert problem in node.log()
        with RawClient(node.port) as client:
            client.greeting()
            client.ehlo()
            assert client.cmd("MAIL FROM:<a@sender.example>").text == "2.1.0 policy v1"


def test_stats_count_queued_messages_and_script_errors(tmp_path: Path) -> None:
    script = write_script(
        tmp_path,
        """
        async def helo(conn, helo):
            if helo.name == "raise.example":
                raise RuntimeError("helo hook exploded")
        """,
    )
    with running_node(tmp_path, server=script) as node:

        def current() -> dict[str, int]:
            result = node.mailwarden("stats", "--json")
            assert result.returncode == 0, result.stderr
            return json.loads(result.stdout)

        with RawClient(node.port) as client:
            client.greeting()
            assert client.cmd("EHLO raise.example").code == 451
            client.ehlo()
            for n in range(3):
                reply = send_transaction(
                    client, "a@sender.example", ["b@example.org"], b"n %d\r\n" % n
                )
                assert reply.code == 250

        def published() -> bool:
            counts = current()
            return counts["messages_queued"] == 3 and counts["script_errors"] == 1

        wait_until(published, "the worker to publish its counters", timeout=15)
        assert current()["connections"] >= 2  # the start-up probe and the client
    # After a restart the counters start again from zero: the earlier run's file is gone.
    with running_node(tmp_path, server=script, port=node.port) as again:
        counts = json.loads(again.mailwarden("stats", "--json").stdout)
        assert counts["messages_queued"] == 0
