"""Every refusal is logged (connection id, phase, client, reply; never AUTH data) and counted by
phase in `mailwarden stats` (issue 10 §6: a 554 at connect or a 451/550 at RCPT left no line,
and messages_rejected stayed 0)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.server.conftest import (
    RawClient,
    open_greeted,
    send_transaction,
    wait_for_log,
    wait_until,
    write_script,
)
from tests.support.node import Node, running_node

SCRIPT = """
from mailwarden.policy.actions import Defer, Reject


async def connect(conn):
    if conn.remote_ip == "127.0.0.3":
        return Reject("Your address is blocked", code=554, enhanced="5.7.1")


async def rcpt_to(conn, tx, recipient):
    if recipient.address == "nobody@example.org":
        return Reject("No such user", code=550, enhanced="5.1.1")
    if recipient.address == "later@example.org":
        raise Defer("Greylisted, try again\\r\\nInjected: line", code=451, enhanced="4.7.1")


async def data(conn, tx, message):
    if message.headers.get("Subject") == "spam":
        return Reject("Message content rejected", code=554, enhanced="5.7.1")
"""

SERVER = 'trusted_networks = ["192.0.2.0/24"]\n'

LINE = re.compile(
    r"connection (?P<id>[0-9a-f]+): (?P<phase>\w+) refused: client=(?P<client>\S+)"
    r'(?P<detail>.*?) reply="(?P<code>\d{3}) (?P<enhanced>\S+) (?P<text>[^"\n]*)"$',
    re.MULTILINE,
)


def refusals(node: Node) -> list[dict[str, str]]:
    return [m.groupdict() for m in LINE.finditer(node.log())]


def stats(node: Node) -> dict[str, int]:
    result = node.mailwarden("stats", "--json")
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def test_refusals_are_logged_and_counted_by_phase(tmp_path: Path) -> None:
    with running_node(tmp_path, server=SERVER + write_script(tmp_path, SCRIPT)) as node:
        with RawClient(node.port, source="127.0.0.3") as blocked:
            reply = blocked.read_reply()
            assert (reply.code, reply.enhanced) == (554, "5.7.1")
        with open_greeted(node.port) as client:
            client.ehlo()
            assert client.cmd("MAIL FROM:<a@sender.example>").code == 250
            assert client.cmd("RCPT TO:<nobody@example.org>").code == 550
            assert client.cmd("RCPT TO:<later@example.org>").code == 451
            assert client.cmd("RCPT TO:<far@remote.example>").code == 554
            assert client.cmd("RSET").code == 250
            spam = b"Subject: spam\r\n\r\nx\r\n"
            assert send_transaction(client, "a@sender.example", ["b@example.org"], spam).code == 554
            # A client that leaves in the middle of a message refused nothing.
            assert client.cmd("MAIL FROM:<a@sender.example>").code == 250
            assert client.cmd("RCPT TO:<b@example.org>").code == 250
            assert client.cmd("DATA").code == 354
            client.send(b"Subject: cut off\r\n")
        wait_for_log(node, "data refused")
        lines = refusals(node)
        by_phase = {(line["phase"], line["code"]): line for line in lines}
        assert len(lines) == 5, lines
        connect = by_phase[("connect", "554")]
        assert connect["client"] == "127.0.0.3"
        assert (connect["enhanced"], connect["text"]) == ("5.7.1", "Your address is blocked")
        nobody = by_phase[("rcpt", "550")]
        assert nobody["client"] == "127.0.0.1"
        assert nobody["detail"] == " to=<nobody@example.org>"
        assert (nobody["enhanced"], nobody["text"]) == ("5.1.1", "No such user")
        later = by_phase[("rcpt", "451")]
        assert later["enhanced"] == "4.7.1"
        # Script text with CR LF stays on one log line, escaped.
        assert later["text"] == "Greylisted, try again\\x0d\\x0aInjected: line"
        relay = by_phase[("rcpt", "554")]
        assert (relay["enhanced"], relay["text"]) == ("5.7.1", "Relay access denied")
        assert by_phase[("data", "554")]["text"] == "Message content rejected"
        # The connection id is the one of the client's other log lines.
        assert nobody["id"] == later["id"] == relay["id"] != connect["id"]

        def counted() -> bool:
            counts = stats(node)
            return counts["refused_connect"] == 1 and counts["refused_rcpt"] == 3

        wait_until(counted, "the worker to publish its counters")
        counts = stats(node)
        assert counts["messages_rejected"] == 1  # only the message refused at end of data
        assert counts["refused_helo"] == counts["refused_mail"] == counts["refused_auth"] == 0


def test_script_errors_are_logged_as_refusals(tmp_path: Path) -> None:
    script = write_script(
        tmp_path,
        """
        async def mail_from(conn, tx, sender):
            raise RuntimeError("database down")
        """,
    )
    with running_node(tmp_path, server=script) as node:
        with open_greeted(node.port) as client:
            client.ehlo()
            reply = client.cmd("MAIL FROM:<a@sender.example>")
            assert (reply.code, reply.enhanced) == (451, "4.3.0")
        wait_for_log(node, "mail refused")
        [line] = refusals(node)
        assert line["phase"] == "mail" and line["detail"] == " from=<a@sender.example>"
        assert (line["code"], line["enhanced"]) == ("451", "4.3.0")
        wait_until(lambda: stats(node)["refused_mail"] == 1, "the refusal in the counters")
