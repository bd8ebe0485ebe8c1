"""A failing hook gets the reply its registry entry names, in every phase, over a real socket:
what the client reads, the refusal line's phase and the counter it goes to (docs/policy.md,
"Errors, timeouts and slow hooks")."""

from __future__ import annotations

import base64
import json
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

from mailwarden.policy.hooks import HOOKS

SCRIPT = """
async def connect(conn):
    if conn.remote_ip == "127.0.0.4":
        raise RuntimeError("connect broke")


async def helo(conn, helo):
    if helo.name == "fail.example":
        raise RuntimeError("helo broke")


async def auth(conn, credentials):
    raise RuntimeError("user database down")


async def mail_from(conn, tx, sender):
    if sender.address == "fail@sender.example":
        raise RuntimeError("mail broke")


async def rcpt_to(conn, tx, recipient):
    if recipient.address == "fail@example.org":
        return "not an action"


async def data(conn, tx, message):
    if message.headers.get("Subject") == "fail":
        raise RuntimeError("data broke")


async def vrfy(conn, argument):
    raise RuntimeError("vrfy broke")
"""

SERVER = "auth_requires_tls = false\n"

# What an operator reads in docs/policy.md, and the registry must say the same.
EXPECTED = {
    "connect": (421, "4.3.2", "connect", "refused_connect"),
    "helo": (451, "4.3.0", "helo", "refused_helo"),
    "auth": (454, "4.7.0", "auth", "refused_auth"),
    "mail_from": (451, "4.3.0", "mail", "refused_mail"),
    "rcpt_to": (451, "4.3.0", "rcpt", "refused_rcpt"),
    "data": (451, "4.3.0", "data", "messages_rejected"),
    "vrfy": (451, "4.3.0", "vrfy", "refused_vrfy"),
}


def stats(node: Node) -> dict[str, int]:
    result = node.mailwarden("stats", "--json")
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def test_each_failing_hook_gets_its_registry_reply(tmp_path: Path) -> None:
    for name, (code, enhanced, phase, counter) in EXPECTED.items():
        spec = HOOKS[name]
        assert spec.failure is not None
        assert (spec.failure.code, spec.failure.enhanced, spec.phase, spec.counter) == (
            code,
            enhanced,
            phase,
            counter,
        )
    seen: dict[str, tuple[int, str | None]] = {}
    with running_node(tmp_path, server=SERVER + write_script(tmp_path, SCRIPT)) as node:
        with RawClient(node.port, source="127.0.0.4") as broken:
            reply = broken.read_reply()
            seen["connect"] = (reply.code, reply.enhanced)
            assert reply.text.endswith(HOOKS["connect"].failure.text)  # type: ignore[union-attr]
        with open_greeted(node.port) as client:
            reply = client.cmd("EHLO fail.example")
            seen["helo"] = (reply.code, reply.enhanced)
            assert client.ehlo().code == 250
            plain = base64.b64encode(b"\x00alice\x00secret").decode()
            reply = client.cmd(f"AUTH PLAIN {plain}")
            seen["auth"] = (reply.code, reply.enhanced)
            reply = client.cmd("MAIL FROM:<fail@sender.example>")
            seen["mail_from"] = (reply.code, reply.enhanced)
            assert client.cmd("MAIL FROM:<a@sender.example>").code == 250
            reply = client.cmd("RCPT TO:<fail@example.org>")
            seen["rcpt_to"] = (reply.code, reply.enhanced)
            assert client.cmd("RSET").code == 250
            reply = send_transaction(
                client, "a@sender.example", ["b@example.org"], b"Subject: fail\r\n\r\nx\r\n"
            )
            seen["data"] = (reply.code, reply.enhanced)
            reply = client.cmd("VRFY someone")
            seen["vrfy"] = (reply.code, reply.enhanced)
        assert seen == {name: (code, enhanced) for name, (code, enhanced, _, _) in EXPECTED.items()}
        wait_for_log(node, "vrfy refused")
        log = node.log()
        for name, (code, enhanced, phase, _) in EXPECTED.items():
            assert f"{phase} refused: client=" in log, name
            assert f'reply="{code} {enhanced} ' in log, name

        def counted() -> bool:
            counts = stats(node)
            return all(counts[counter] >= 1 for _, _, _, counter in EXPECTED.values())

        wait_until(counted, "every phase's refusal in the counters")
