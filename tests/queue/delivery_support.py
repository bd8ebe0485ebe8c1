"""End-to-end delivery: a sending ``mailwarden run`` node and the real peers it delivers to.

The peer is a second Mailwarden (``[queue] deliver = false``: it keeps what it receives) whose
script counts connections (total, and the most open at once) into ``connections.json`` and
answers RCPT by local part: ``reject*`` 550 5.1.1, ``defer*`` 451 4.3.0, ``close*`` 421.
"""

from __future__ import annotations

import email
import email.policy
import json
import smtplib
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from pathlib import Path

from tests.support.node import Node, free_port, node_process, node_user_line

from mailwarden.spool.reader import iter_messages, read_message_bytes
from mailwarden.spool.records import SpoolRecord

PEER_SCRIPT = """
import json
from pathlib import Path

from mailwarden.policy.actions import Defer, Reject

OUT = Path(__file__).with_name("connections.json")
COUNTS = {"open": 0, "most": 0, "total": 0}


def _write():
    OUT.write_text(json.dumps(COUNTS))


async def connect(conn):
    COUNTS["open"] += 1
    COUNTS["total"] += 1
    COUNTS["most"] = max(COUNTS["most"], COUNTS["open"])
    _write()


async def disconnect(conn):
    COUNTS["open"] -= 1
    _write()


async def rcpt_to(conn, tx, recipient):
    local = recipient.address.split("@")[0]
    if local.startswith("reject"):
        return Reject("no such user here", code=550, enhanced="5.1.1")
    if local.startswith("defer"):
        return Defer("mailbox busy, try later", code=451, enhanced="4.3.0")
    if local.startswith("close"):
        return Defer("too many connections", code=421, enhanced="4.7.0", disconnect=True)
"""


def node_config(
    port: int,
    *,
    data: str = "data",
    workers: int = 1,
    server: str = "",
    body: str = "",
    node_extra: str = "",
) -> str:
    return (
        textwrap.dedent(
            f"""
        [node]
        data_dir = "{data}"
        workers = {workers}
        shutdown_grace = 5
        hostname = "mx.sender.example"
        {node_user_line()}
        {node_extra}

        [[servers]]
        id = "inbound"
        listen = ["127.0.0.1:{port}"]
        local_domains = ["sender.example"]
        """
        )
        + textwrap.dedent(server)
        + "\n"
        + textwrap.dedent(body)
    )


@contextmanager
def peer_node(directory: Path, *, server: str = "") -> Iterator[Node]:
    """The receiving Mailwarden: accepts for every domain the tests use, delivers nothing."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "peer.py").write_text(PEER_SCRIPT)
    port = free_port()
    config = textwrap.dedent(
        f"""
        [node]
        data_dir = "data"
        workers = 1
        shutdown_grace = 5
        hostname = "peer.test.example"
        {node_user_line()}

        [queue]
        deliver = false

        [[servers]]
        id = "peer"
        listen = ["127.0.0.1:{port}"]
        script = "peer.py"
        trusted_networks = []
        local_domains = ["example.net", "sender.example", "twomx.test", "other.test"]
        """
    ) + textwrap.dedent(server)
    path = directory / "mailwarden.toml"
    path.write_text(config)
    with node_process(directory, path, port) as node:
        yield node


@contextmanager
def sending_node(
    directory: Path, *, body: str = "", workers: int = 1, node_extra: str = ""
) -> Iterator[Node]:
    """The node under test: accepts from loopback (trusted), delivers by its routes/MX."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    path = directory / "mailwarden.toml"
    path.write_text(node_config(port, workers=workers, body=body, node_extra=node_extra))
    with node_process(directory, path, port) as node:
        yield node


def route_to(port: int, domains: str = '["*"]', extra: str = "") -> str:
    return f"""
[[routes]]
domains = {domains}
next_hop = "[127.0.0.1]:{port}"
{extra}
"""


FAST_RETRIES = """
[queue]
retry_intervals = [600]
poll_interval = 0.2
"""


def message(
    subject: str, sender: str, recipients: list[str], body: str = "hello\n"
) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = ", ".join(recipients)
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{subject.replace(' ', '-')}@sender.example>"
    msg.set_content(body)
    return msg


def send(
    port: int, sender: str, recipients: list[str], subject: str, body: str = "hello\n"
) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.send_message(message(subject, sender, recipients, body), sender, recipients)


def wait_until(predicate: Callable[[], object], timeout: float = 30.0, what: str = "") -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"not true after {timeout}s: {what or predicate}")
        time.sleep(0.1)


def queued(node: Node) -> list[SpoolRecord]:
    return list(iter_messages(node.spool))


def received(peer: Node) -> list[tuple[SpoolRecord, bytes]]:
    """What the peer has kept: each message's envelope and bytes."""
    out = []
    for record in iter_messages(peer.spool):
        data = read_message_bytes(peer.spool, record.id)
        if data is not None:
            out.append((record, data))
    return out


def parsed(data: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)  # type: ignore[return-value]


def peer_connections(peer: Node) -> dict[str, int]:
    path = peer.directory / "connections.json"
    return json.loads(path.read_text()) if path.exists() else {"open": 0, "most": 0, "total": 0}
