"""Server-owned facts of a connection are read-only to scripts, and the relay rule cannot be
opened from a script (issue 10 §7): assigning ``conn.trusted`` or ``conn.auth`` is a script error,
and even poking the private fields leaves relaying to other domains refused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.server.conftest import RawClient, open_greeted, write_script
from tests.support.node import Node, running_node

SCRIPT = """
from mailwarden.policy.actions import Accept
from mailwarden.policy.context import AuthIdentity, TlsInfo

FORGED = {
    "id": "forged",
    "server_id": "forged",
    "remote_ip": "192.0.2.1",
    "remote_port": 1,
    "local_ip": "192.0.2.2",
    "local_port": 2,
    "tls": TlsInfo("TLSv1.3", "forged", 256),
    "helo_name": "forged.example",
    "esmtp": False,
    "auth": AuthIdentity("mallory", "PLAIN"),
    "trusted": True,
}


def forge(conn, name):
    if name == "trusted":
        conn.trusted = True
    elif name == "auth":
        conn.auth = AuthIdentity("mallory", "PLAIN")


async def connect(conn):
    if conn.remote_ip == "127.0.0.2":
        forge(conn, "trusted")
    if conn.remote_ip == "127.0.0.3":
        forge(conn, "auth")


async def helo(conn, helo):
    if helo.name.startswith("forge-"):
        forge(conn, helo.name.removeprefix("forge-").split(".")[0])
    if helo.name == "every.example":
        refused = []
        for name, value in FORGED.items():
            try:
                setattr(conn, name, value)
            except AttributeError:
                refused.append(name)
        conn.state["refused"] = refused
        conn.state = dict(conn.state)  # the script's own dict: it may replace it
    if helo.name == "private.example":
        # Beyond the API: the relay rule does not read these fields, so it stays closed.
        object.__setattr__(conn, "_trusted", True)
        object.__setattr__(conn, "_auth", AuthIdentity("mallory", "PLAIN"))


async def mail_from(conn, tx, sender):
    if sender.address.startswith("forge-"):
        forge(conn, sender.address.removeprefix("forge-").split("@")[0])


async def rcpt_to(conn, tx, recipient):
    refused = ",".join(conn.state.get("refused", []))
    return Accept(text=f"refused={refused} trusted={conn.trusted}")
"""

# Nobody is trusted: only AUTH would let a client relay, and nobody can AUTH here.
SERVER = 'trusted_networks = ["192.0.2.0/24"]\n'


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    with running_node(tmp_path, server=SERVER + write_script(tmp_path, SCRIPT)) as node:
        yield node


@pytest.mark.parametrize("source", ["127.0.0.2", "127.0.0.3"], ids=["trusted", "auth"])
def test_assigning_at_connect_is_a_script_error(node: Node, source: str) -> None:
    with RawClient(node.port, source=source) as client:
        reply = client.read_reply()
        assert (reply.code, reply.enhanced) == (421, "4.3.2")
    assert "is set by the server and read-only to scripts" in node.log()


@pytest.mark.parametrize("fact", ["trusted", "auth"])
def test_assigning_at_helo_or_mail_is_a_script_error_and_relay_stays_closed(
    node: Node, fact: str
) -> None:
    with open_greeted(node.port) as client:
        reply = client.cmd(f"EHLO forge-{fact}.example")
        assert (reply.code, reply.enhanced) == (451, "4.3.0")
        client.ehlo()
        reply = client.cmd(f"MAIL FROM:<forge-{fact}@sender.example>")
        assert (reply.code, reply.enhanced) == (451, "4.3.0")
        assert client.cmd("MAIL FROM:<a@sender.example>").code == 250
        reply = client.cmd("RCPT TO:<someone@remote.example>")
        assert (reply.code, reply.text) == (554, "5.7.1 Relay access denied")
    assert f"conn.{fact} is set by the server and read-only to scripts" in node.log()


def test_every_server_owned_fact_is_read_only(node: Node) -> None:
    with open_greeted(node.port) as client:
        client.ehlo("every.example")
        assert client.cmd("MAIL FROM:<a@sender.example>").code == 250
        reply = client.cmd("RCPT TO:<b@example.org>")
        refused = (
            "id,server_id,remote_ip,remote_port,local_ip,local_port,"
            "tls,helo_name,esmtp,auth,trusted"
        )
        assert reply.text == f"2.1.5 refused={refused} trusted=False"
        reply = client.cmd("RCPT TO:<someone@remote.example>")
        assert (reply.code, reply.text) == (554, "5.7.1 Relay access denied")


def test_private_fields_do_not_open_the_relay(node: Node) -> None:
    with open_greeted(node.port) as client:
        client.ehlo("private.example")
        assert client.cmd("MAIL FROM:<a@sender.example>").code == 250
        reply = client.cmd("RCPT TO:<someone@remote.example>")
        assert (reply.code, reply.text) == (554, "5.7.1 Relay access denied")
