"""`mailwarden queue list` and `queue show` against a real node: what an operator reads at an
80-column terminal, and the stored message byte for byte."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

from tests.cli.cli_support import listed, mailwarden, raw, send, split_received
from tests.support.node import running_node

STAMP_SCRIPT = """
from mailwarden.policy.actions import Accept, Queue


async def mail_from(conn, tx, sender):
    return Accept(metadata={"origin": "test"})


async def rcpt_to(conn, tx, recipient):
    return Accept(metadata={"route": "lmtp"})


async def data(conn, tx, message):
    message.headers.add("X-Policy-Stamp", "checked by policy.py")
    return Queue(metadata={"stamped": True})
"""

STAMP = b"X-Policy-Stamp: checked by policy.py\r\n"
LONG_SENDER = "a.sender.with.a.rather.long.local.part@a-long-subdomain.client.test"
LONG_RECIPIENTS = [
    "the-first-recipient-with-a-long-address@example.org",
    "second@example.org",
    "third@example.org",
]


def message(subject: str, body: bytes) -> bytes:
    return f"From: <alice@client.test>\r\nSubject: {subject}\r\n\r\n".encode() + body


def write_script(directory: Path) -> str:
    (directory / "policy.py").write_text(textwrap.dedent(STAMP_SCRIPT))
    return 'script = "policy.py"\n'


def test_queue_list_fits_80_columns_and_json_keeps_everything(tmp_path: Path) -> None:
    with running_node(tmp_path) as node:
        long_id = send(node.port, message("long", b"x\r\n"), LONG_RECIPIENTS, LONG_SENDER)
        short_id = send(node.port, message("short", b"y\r\n"), ["b@example.org"], "c@client.test")
        table = node.mailwarden("queue", "list")
        narrow = mailwarden(
            "queue", "list", "--config", str(node.config_path), env={"COLUMNS": "80"}
        )
        too_narrow = mailwarden(
            "queue", "list", "--config", str(node.config_path), env={"COLUMNS": "40"}
        )

    assert narrow.returncode == 0, narrow.stderr
    lines = narrow.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, narrow.stdout
    assert table.returncode == 0
    # Ids whole, on their own line each, never cut.
    assert any(long_id in line for line in lines) and any(short_id in line for line in lines)
    text = narrow.stdout
    # Long addresses are cut with an ellipsis, further recipients counted.
    assert LONG_SENDER not in text and LONG_RECIPIENTS[0] not in text
    assert re.search(r"from a\.sender\.with\S*…", text), text
    assert re.search(r"to the-first-\S*… \+2 more", text), text
    # Short ones are shown as they are.
    assert "from c@client.test" in text and "to b@example.org" in text
    assert lines[-1] == "2 message(s)"
    # Narrower than the columns that are never cut: lines get longer, ids stay whole.
    assert too_narrow.returncode == 0, too_narrow.stderr
    assert long_id in too_narrow.stdout and short_id in too_narrow.stdout

    # --json keeps every value in full.
    by_id = {
        entry["id"]: entry
        for entry in json.loads(node.mailwarden("queue", "list", "--json").stdout)
    }
    assert by_id[long_id]["sender"] == LONG_SENDER
    assert [r["address"] for r in by_id[long_id]["recipients"]] == LONG_RECIPIENTS


def test_empty_queue_names_the_spool_it_read(tmp_path: Path) -> None:
    with running_node(tmp_path) as node:
        result = node.mailwarden("queue", "list")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"0 message(s) in {node.spool}"


def test_queue_show_raw_is_the_stamped_message_byte_for_byte(tmp_path: Path) -> None:
    sent = message("stamped", b"Hello,\r\n.leading dot\r\nbye\r\n")
    with running_node(tmp_path, server=write_script(tmp_path)) as node:
        message_id = send(node.port, sent, ["b@example.org"])
        stored = raw(node, message_id)
    assert stored.startswith(STAMP)  # the script adds its field at the top
    received, rest = split_received(stored.removeprefix(STAMP))
    assert message_id.encode() in received  # then the node's own trace field
    assert rest == sent


def test_queue_show_raw_of_a_spilled_body(tmp_path: Path) -> None:
    """A body past spool.memory_threshold (128 KiB) lives in a spill file: --raw reads it."""
    lines = [f"line {n:06d} ".encode() + b"z" * (n % 70) + b"\r\n" for n in range(6000)]
    body = b"".join(lines)
    assert len(body) > 128 * 1024
    sent = message("large", body)
    with running_node(tmp_path, server=write_script(tmp_path)) as node:
        message_id = send(node.port, sent, ["b@example.org"])
        stored = raw(node, message_id)
        shown = node.mailwarden("queue", "show", message_id)
        assert list((node.spool / "data").iterdir()), "the body should have spilled to a file"
    assert shown.returncode == 0, shown.stderr
    assert "\r" not in shown.stdout
    assert shown.stdout.endswith("\n\n" + body.decode().replace("\r\n", "\n")), (
        "the text form shows the whole body"
    )
    assert stored.startswith(STAMP)
    _, rest = split_received(stored.removeprefix(STAMP))
    assert rest == sent


def test_queue_show_envelope_recipients_and_message(tmp_path: Path) -> None:
    sent = message("shown", b"Bonjour \xc3\xa9t\xc3\xa9\r\nbell \x1b[31mred\r\n")
    with running_node(tmp_path, server=write_script(tmp_path)) as node:
        message_id = send(node.port, sent, ["b@example.org", "c@example.org"])
        shown = node.mailwarden("queue", "show", message_id)
        as_json = node.mailwarden("queue", "show", message_id, "--json")
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert f"message {message_id}" in text
    for expected in (
        "sender        <alice@client.test>",
        "client        127.0.0.1 port ",
        "helo          client.test",
        "server        inbound",
        "tls           none",
        'metadata      {"origin": "test"}',
        "address       <b@example.org>",
        "address       <c@example.org>",
        "state         active",
        "retries       0",
        'metadata      {"route": "lmtp", "stamped": true}',
        "X-Policy-Stamp: checked by policy.py",
        "Subject: shown",
        "Bonjour été",
    ):
        assert expected in text, (expected, text)
    # An escape sequence in the message never reaches the operator's terminal as one.
    assert "\x1b" not in text and "bell \\x1b[31mred" in text
    assert "\r" not in text

    assert as_json.returncode == 0, as_json.stderr
    document = json.loads(as_json.stdout)
    assert document["id"] == message_id
    assert document["sender"] == "alice@client.test"
    assert document["helo"] == "client.test"
    assert document["client_ip"] == "127.0.0.1" and document["client_port"] > 0
    assert document["metadata"] == {"origin": "test"}
    assert [r["address"] for r in document["recipients"]] == ["b@example.org", "c@example.org"]
    assert document["recipients"][0]["metadata"] == {"route": "lmtp", "stamped": True}
    assert document["recipients"][0]["state"] == "active"


def test_queue_show_unknown_id_exits_1(tmp_path: Path) -> None:
    with running_node(tmp_path) as node:
        send(node.port, message("one", b"x\r\n"), ["b@example.org"])
        result = node.mailwarden("queue", "show", "0123456789abcdef")
        assert len(listed(node)) == 1
    assert result.returncode == 1
    assert result.stdout == ""
    assert f"no message '0123456789abcdef' in {node.spool}" in result.stderr
