"""Policy scripts end to end: every action at every phase, script errors, slow hooks, state."""

from __future__ import annotations

import asyncio
import re
import smtplib
from collections.abc import Iterator
from pathlib import Path

import aiosmtplib
import pytest
from tests.server.conftest import (
    RawClient,
    Reply,
    limits,
    only_message,
    queued,
    send_transaction,
    split_received,
    stored_bytes,
    wait_for_log,
    wait_until,
    write_script,
)
from tests.support.node import Node, running_node

from mailwarden.spool.reader import QueuedMessage

POLICY = """
from mailwarden.policy.actions import Accept, Defer, Discard, Hold, Queue, Reject


async def connect(conn):
    conn.state["seen"] = ["connect"]


async def helo(conn, helo):
    conn.state["seen"].append(f"helo:{helo.name}")
    if helo.name == "reject.example":
        return Reject("HELO refused", code=550, enhanced="5.7.1", lines=["line two", "line three"])
    if helo.name == "defer.example":
        return Defer("Come back later", code=450, enhanced="4.7.1")
    if helo.name == "bye.example":
        return Reject("Go away", code=554, enhanced="5.7.1", disconnect=True)
    if helo.name == "raise.example":
        raise RuntimeError("helo hook exploded")
    return None


async def mail_from(conn, tx, sender):
    conn.state["seen"].append("mail")
    local = sender.address.partition("@")[0]
    if local == "rewrite":
        return Accept(
            sender="rewritten@sender.example", text="Sender rewritten",
            metadata={"campaign": "spring"},
        )
    if local == "reject":
        return Reject("Sender blocked", code=553, enhanced="5.7.1", lines=["See the policy page"])
    if local == "defer":
        return Defer("Greylisted, try again", code=450, enhanced="4.7.1")
    if local == "bye":
        return Reject("Blocked sender", code=550, enhanced="5.7.1", disconnect=True)
    if local == "raise":
        raise ValueError("boom in mail_from")
    if local == "raised-reject":
        raise Reject("Raised from deep inside", code=550, enhanced="5.7.27")
    if local == "wrong":
        return Hold()  # not an action mail_from may answer
    if local == "id":
        return Accept(text=f"connection {conn.id}")
    return None


async def rcpt_to(conn, tx, recipient):
    conn.state["seen"].append("rcpt")
    local = recipient.address.partition("@")[0]
    if local == "rewrite":
        return Accept(
            recipient="final@example.org", text="Recipient rewritten",
            metadata={"route": "mailbox-7"},
        )
    if local == "reject":
        return Reject("No such user here", code=550, enhanced="5.1.1")
    if local == "defer":
        return Defer("Mailbox busy", code=452, enhanced="4.2.2")
    if local == "bye":
        return Reject("Enough", code=550, enhanced="5.7.1", disconnect=True)
    if local == "raise":
        raise KeyError("rcpt hook exploded")
    if local == "wrong":
        return 42
    if local == "quarantine":
        return Accept(metadata={"quarantine": True})
    return None


async def data(conn, tx, message):
    conn.state["seen"].append("data")
    subject = message.headers.get("Subject", "")
    if subject == "reject":
        return Reject("Spam detected", code=554, enhanced="5.7.1", lines=["score 12.5", "limit 5"])
    if subject == "defer":
        return Defer("Scanner unavailable", code=451, enhanced="4.7.1")
    if subject == "disconnect":
        return Reject("Bye now", code=550, enhanced="5.7.1", disconnect=True)
    if subject == "hold":
        return Hold("suspicious attachment")
    if subject == "discard":
        return Discard()
    if subject == "queue":
        return Queue(metadata={"priority": "high"}, text="Queued with priority")
    if subject == "accept":
        return Accept(text="Thanks, got it", metadata={"scanned": True})
    if subject == "raise":
        return 1 / 0
    if subject == "wrong":
        return Accept  # the class, not an action
    if subject == "headers":
        message.headers.add("X-Policy", "stamped")
        message.headers.set("Subject", "rewritten subject")
        message.headers.delete("X-Remove")
        message.headers.add("X-Last", "appended", at_top=False)
    if subject == "state":
        message.headers.add("X-State", ",".join(conn.state["seen"]))
    if subject == "per-recipient":
        for recipient in tx.recipients:
            if recipient.metadata.get("quarantine"):
                recipient.hold("per-recipient hold")
    if subject == "body":
        body = await message.body()
        message.headers.add("X-Body-Size", f"{len(body)} {message.body_size}")
    return None


async def vrfy(conn, argument):
    if argument == "bob":
        return Accept(text="Bob <bob@example.org>")
    if argument == "nobody":
        return Reject("No such user", code=550, enhanced="5.1.1")
    if argument.startswith("echo"):
        return Accept()  # no text of its own: the reply names what the client asked for
    if argument == "split":
        # A script passing along text with CR/LF must not let it forge a second reply line.
        return Reject("first\\r\\n250 2.0.0 forged", code=550, enhanced="5.1.1")
    return None
"""


@pytest.fixture(scope="module")
def policy_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    directory = tmp_path_factory.mktemp("policy")
    with running_node(directory, server=write_script(directory, POLICY)) as node:
        yield node


@pytest.fixture
def client(policy_node: Node) -> Iterator[RawClient]:
    with RawClient(policy_node.port) as raw:
        raw.greeting()
        yield raw


def message(subject: str, extra: bytes = b"") -> bytes:
    return b"Subject: " + subject.encode() + b"\r\n" + extra + b"\r\nbody line\r\n"


def queued_as(node: Node, reply_text: str) -> str:
    match = re.search(r"queued as (\w+)", reply_text)
    assert match is not None, reply_text
    return match.group(1)


def find(node: Node, message_id: str) -> QueuedMessage:
    (found,) = [m for m in queued(node) if m.id == message_id]
    return found


# --- helo ---------------------------------------------------------------------------------------


def test_helo_reject_multiline_custom_codes(client: RawClient) -> None:
    reply = client.cmd("EHLO reject.example")
    assert reply.code == 550
    assert reply.lines == ("5.7.1 HELO refused", "5.7.1 line two", "5.7.1 line three")
    assert reply.raw.startswith(b"550-5.7.1 HELO refused\r\n550-5.7.1 line two\r\n550 5.7.1")
    # Refused: still no HELO on record.
    assert client.cmd("MAIL FROM:<a@sender.example>").code == 503
    client.ehlo()


def test_helo_defer(client: RawClient) -> None:
    reply = client.cmd("HELO defer.example")
    assert (reply.code, reply.enhanced, reply.text) == (450, "4.7.1", "4.7.1 Come back later")


def test_helo_disconnect(client: RawClient) -> None:
    reply = client.cmd("EHLO bye.example")
    assert (reply.code, reply.enhanced) == (554, "5.7.1")
    assert client.read_until_closed() == b""


def test_helo_hook_raising_is_451(client: RawClient, policy_node: Node) -> None:
    reply = client.cmd("EHLO raise.example")
    assert (reply.code, reply.enhanced) == (451, "4.3.0"), reply
    client.ehlo()  # the session goes on
    wait_for_log(policy_node, "RuntimeError: helo hook exploded")


# --- mail_from ----------------------------------------------------------------------------------


def test_mail_from_actions(client: RawClient) -> None:
    client.ehlo()
    reply = client.cmd("MAIL FROM:<reject@sender.example>")
    assert reply.raw == b"553-5.7.1 Sender blocked\r\n553 5.7.1 See the policy page\r\n"
    reply = client.cmd("MAIL FROM:<defer@sender.example>")
    assert reply.raw == b"450 4.7.1 Greylisted, try again\r\n"
    reply = client.cmd("MAIL FROM:<raised-reject@sender.example>")
    assert reply.raw == b"550 5.7.27 Raised from deep inside\r\n"
    # None of these opened a transaction.
    assert client.cmd("RCPT TO:<b@example.org>").code == 503
    reply = client.cmd("MAIL FROM:<bye@sender.example>")
    assert (reply.code, reply.enhanced) == (550, "5.7.1")
    assert client.read_until_closed() == b""


def test_mail_from_rewrite_text_and_metadata(client: RawClient, policy_node: Node) -> None:
    client.ehlo()
    reply = client.cmd("MAIL FROM:<rewrite@sender.example>")
    assert reply.raw == b"250 2.1.0 Sender rewritten\r\n"
    assert client.cmd("RCPT TO:<b@example.org>").code == 250
    assert client.cmd("DATA").code == 354
    client.send(message("plain") + b".\r\n")
    reply = client.read_reply()
    assert reply.code == 250
    stored = find(policy_node, queued_as(policy_node, reply.text))
    assert stored.sender == "rewritten@sender.example"
    assert stored.metadata == {"campaign": "spring"}


@pytest.mark.parametrize("local", ["raise", "wrong"])
def test_mail_from_script_error_is_451_with_logged_traceback(
    client: RawClient, policy_node: Node, local: str
) -> None:
    client.ehlo()
    reply = client.cmd("MAIL FROM:<id@sender.example>")
    connection_id = reply.text.removeprefix("2.1.0 connection ")
    assert client.cmd("RSET").code == 250
    reply = client.cmd(f"MAIL FROM:<{local}@sender.example>")
    assert (reply.code, reply.enhanced) == (451, "4.3.0"), reply
    assert client.cmd("RCPT TO:<b@example.org>").code == 503  # no transaction was opened
    if local == "raise":
        wait_for_log(policy_node, f"connection {connection_id}: hook mail_from raised")
        log = policy_node.log()
        after = log[log.index(f"connection {connection_id}: hook mail_from raised") :]
        assert "Traceback (most recent call last)" in after
        assert "ValueError: boom in mail_from" in after
        assert "policy.py" in after
    else:
        wait_for_log(policy_node, f"connection {connection_id}: hook mail_from returned Hold(")


# --- rcpt_to ------------------------------------------------------------------------------------


def test_rcpt_to_actions(client: RawClient, policy_node: Node) -> None:
    client.ehlo()
    assert client.cmd("MAIL FROM:<a@sender.example>").code == 250
    assert client.cmd("RCPT TO:<reject@example.org>").raw == b"550 5.1.1 No such user here\r\n"
    assert client.cmd("RCPT TO:<defer@example.org>").raw == b"452 4.2.2 Mailbox busy\r\n"
    reply = client.cmd("RCPT TO:<raise@example.org>")
    assert (reply.code, reply.enhanced) == (451, "4.3.0")
    reply = client.cmd("RCPT TO:<wrong@example.org>")
    assert (reply.code, reply.enhanced) == (451, "4.3.0")
    assert client.cmd("RCPT TO:<rewrite@example.org>").raw == b"250 2.1.5 Recipient rewritten\r\n"
    assert client.cmd("RCPT TO:<plain@example.org>").raw == b"250 2.1.5 Recipient OK\r\n"
    assert client.cmd("DATA").code == 354
    client.send(message("plain") + b".\r\n")
    reply = client.read_reply()
    assert reply.code == 250
    stored = find(policy_node, queued_as(policy_node, reply.text))
    # Only the accepted recipients, the rewritten one under its new address with its metadata.
    assert [(r.address, r.metadata) for r in stored.recipients] == [
        ("final@example.org", {"route": "mailbox-7"}),
        ("plain@example.org", {}),
    ]
    wait_for_log(policy_node, "KeyError: 'rcpt hook exploded'")
    wait_for_log(policy_node, "hook rcpt_to returned 42")


def test_rcpt_to_disconnect(client: RawClient) -> None:
    client.ehlo()
    assert client.cmd("MAIL FROM:<a@sender.example>").code == 250
    reply = client.cmd("RCPT TO:<bye@example.org>")
    assert reply.raw == b"550 5.7.1 Enough\r\n"
    assert client.read_until_closed() == b""


# --- data ---------------------------------------------------------------------------------------


def _data(
    client: RawClient, subject: str, recipients: tuple[str, ...] = ("b@example.org",)
) -> Reply:
    client.ehlo()
    return send_transaction(client, "a@sender.example", list(recipients), message(subject))


@pytest.mark.parametrize(
    ("subject", "raw"),
    [
        ("reject", b"554-5.7.1 Spam detected\r\n554-5.7.1 score 12.5\r\n554 5.7.1 limit 5\r\n"),
        ("defer", b"451 4.7.1 Scanner unavailable\r\n"),
    ],
)
def test_data_refusals_queue_nothing(
    client: RawClient, policy_node: Node, subject: str, raw: bytes
) -> None:
    before = queued(policy_node)
    reply = _data(client, subject)
    assert reply.raw == raw
    assert client.cmd("NOOP").code == 250
    assert queued(policy_node) == before


def test_data_disconnect(client: RawClient, policy_node: Node) -> None:
    before = queued(policy_node)
    reply = _data(client, "disconnect")
    assert reply.raw == b"550 5.7.1 Bye now\r\n"
    assert client.read_until_closed() == b""
    assert queued(policy_node) == before


@pytest.mark.parametrize(("subject", "error"), [("raise", "ZeroDivisionError"), ("wrong", "")])
def test_data_script_error_is_451_never_250(
    client: RawClient, policy_node: Node, subject: str, error: str
) -> None:
    before = queued(policy_node)
    reply = _data(client, subject)
    assert (reply.code, reply.enhanced) == (451, "4.3.0"), reply
    assert queued(policy_node) == before
    wait_for_log(policy_node, "ZeroDivisionError" if error else "hook data returned <class")


def test_data_hold(client: RawClient, policy_node: Node) -> None:
    reply = _data(client, "hold", ("b@example.org", "c@example.org"))
    assert reply.code == 250
    stored = find(policy_node, queued_as(policy_node, reply.text))
    assert stored.state == "held"
    assert {(r.state, r.reason) for r in stored.recipients} == {("held", "suspicious attachment")}


def test_data_discard_replies_250_queues_nothing(client: RawClient, policy_node: Node) -> None:
    before = queued(policy_node)
    reply = _data(client, "discard")
    assert (reply.code, reply.enhanced) == (250, "2.0.0")
    assert queued(policy_node) == before


def test_data_queue_metadata_and_text(client: RawClient, policy_node: Node) -> None:
    client.ehlo()
    assert client.cmd("MAIL FROM:<a@sender.example>").code == 250
    assert client.cmd("RCPT TO:<rewrite@example.org>").code == 250
    assert client.cmd("RCPT TO:<queue-other@example.org>").code == 250
    assert client.cmd("DATA").code == 354
    client.send(message("queue") + b".\r\n")
    reply = client.read_reply()
    assert reply.raw == b"250 2.0.0 Queued with priority\r\n"
    (stored,) = [
        m for m in queued(policy_node) if m.recipients[-1].address == "queue-other@example.org"
    ]
    assert [r.metadata for r in stored.recipients] == [
        {"route": "mailbox-7", "priority": "high"},
        {"priority": "high"},
    ]


def test_data_accept_text_and_metadata(client: RawClient, policy_node: Node) -> None:
    client.ehlo()
    reply = send_transaction(client, "a@sender.example", ["acc@example.org"], message("accept"))
    assert reply.raw == b"250 2.0.0 Thanks, got it\r\n"
    (stored,) = [m for m in queued(policy_node) if m.recipients[0].address == "acc@example.org"]
    assert stored.recipients[0].metadata == {"scanned": True}


def test_per_recipient_hold(client: RawClient, policy_node: Node) -> None:
    reply = _data(client, "per-recipient", ("quarantine@example.org", "fine@example.org"))
    assert reply.code == 250
    stored = find(policy_node, queued_as(policy_node, reply.text))
    assert stored.state == "mixed"
    assert [(r.address, r.state, r.reason) for r in stored.recipients] == [
        ("quarantine@example.org", "held", "per-recipient hold"),
        ("fine@example.org", "active", ""),
    ]


def test_header_edits_show_in_stored_message(client: RawClient, policy_node: Node) -> None:
    client.ehlo()
    data = b"Subject: headers\r\nX-Remove: one\r\nX-Keep: yes\r\nX-Remove: two\r\n\r\nbody\r\n"
    reply = send_transaction(client, "a@sender.example", ["b@example.org"], data)
    assert reply.code == 250
    stored = stored_bytes(policy_node, queued_as(policy_node, reply.text))
    # add() puts a field at the top, before the Received: field the server prepended.
    assert stored.startswith(b"X-Policy: stamped\r\nReceived: from client.example")
    _, rest = split_received(stored.removeprefix(b"X-Policy: stamped\r\n"))
    assert rest == b"Subject: rewritten subject\r\nX-Keep: yes\r\nX-Last: appended\r\n\r\nbody\r\n"


def test_message_body_available_to_data_hook(client: RawClient, policy_node: Node) -> None:
    reply = _data(client, "body")
    stored = stored_bytes(policy_node, queued_as(policy_node, reply.text))
    assert b"X-Body-Size: 11 11\r\n" in stored  # b"body line\r\n"


def test_connection_state_carried_between_hooks(client: RawClient, policy_node: Node) -> None:
    reply = _data(client, "state")
    stored = stored_bytes(policy_node, queued_as(policy_node, reply.text))
    assert b"X-State: connect,helo:client.example,mail,rcpt,data\r\n" in stored


def test_vrfy(client: RawClient) -> None:
    client.ehlo()
    assert client.cmd("VRFY bob").raw == b"250 2.1.5 Bob <bob@example.org>\r\n"
    assert client.cmd("VRFY nobody").raw == b"550 5.1.1 No such user\r\n"
    reply = client.cmd("VRFY someone")  # the hook returns None: the default 252
    assert (reply.code, reply.enhanced) == (252, "2.5.0")
    assert client.cmd("VRFY echo-plain").raw == b"250 2.1.5 echo-plain\r\n"
    reply = client.cmd("VRFY split")
    assert reply.raw == b"550 5.1.1 first\\x0d\\x0a250 2.0.0 forged\r\n"


def test_vrfy_never_echoes_raw_input(client: RawClient) -> None:
    client.ehlo()
    reply = client.cmd("VRFY echo-jøran\x1b[2J".encode())
    assert reply.code == 250
    # Escaped: no control character and no raw 8-bit byte goes back to the client.
    assert all(0x20 <= byte < 0x7F for byte in reply.raw[:-2]), reply
    assert client.cmd("NOOP").code == 250


# --- connect, and hooks returning None ----------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "greeting"),
    [
        ('Reject("No mail from you", code=554, enhanced="5.7.1")', b"554 5.7.1 No mail from you"),
        ('Defer("Too busy", code=421, enhanced="4.3.2")', b"421 4.3.2 Too busy"),
        ('Accept(text="Welcome, friend")', b"220 mx.test.example Welcome, friend"),
    ],
)
def test_connect_actions(tmp_path: Path, action: str, greeting: bytes) -> None:
    script = write_script(
        tmp_path,
        f"""
        from mailwarden.policy.actions import Accept, Defer, Reject

        async def connect(conn):
            return {action}
        """,
    )
    with running_node(tmp_path, server=script) as node, RawClient(node.port) as client:
        reply = client.read_reply()
        assert reply.raw == greeting + b"\r\n"
        if reply.code == 554:
            # RFC 5321 §3.1: after a 554 greeting only QUIT is served.
            assert client.cmd("EHLO client.example").code == 503
            assert client.cmd("QUIT").code == 221
        elif reply.code == 421:
            assert client.read_until_closed() == b""
        else:
            client.ehlo()


def test_connect_hook_raising_refuses_with_421(tmp_path: Path) -> None:
    script = write_script(tmp_path, "async def connect(conn):\n    raise OSError('db down')\n")
    with running_node(tmp_path, server=script) as node, RawClient(node.port) as client:
        reply = client.read_reply()
        assert reply.code == 421, reply
        assert client.read_until_closed() == b""
        wait_for_log(node, "OSError: db down")


def test_hooks_returning_none_take_defaults(tmp_path: Path) -> None:
    script = write_script(
        tmp_path,
        """
        async def connect(conn): return None
        async def helo(conn, helo): return None
        async def mail_from(conn, tx, sender): return None
        async def rcpt_to(conn, tx, recipient): return None
        async def data(conn, tx, message): return None
        async def vrfy(conn, argument): return None
        async def disconnect(conn): return None
        """,
    )
    with (
        running_node(tmp_path, server=script) as node,
        smtplib.SMTP("127.0.0.1", node.port, timeout=15) as smtp,
    ):
        assert smtp.verify("bob")[0] == 252
        assert (
            smtp.sendmail("a@sender.example", ["b@example.org"], b"Subject: d\r\n\r\nx\r\n") == {}
        )
    assert only_message(node).state == "active"


def test_hook_timeout_is_451(tmp_path: Path) -> None:
    script = write_script(
        tmp_path,
        """
        import asyncio

        async def rcpt_to(conn, tx, recipient):
            await asyncio.sleep(60)
        """,
    )
    with (
        running_node(tmp_path, server=script, body=limits(hook_timeout=1)) as node,
        RawClient(node.port) as client,
    ):
        client.greeting()
        client.ehlo()
        assert client.cmd("MAIL FROM:<a@sender.example>").code == 250
        reply = client.cmd("RCPT TO:<b@example.org>")
        assert (reply.code, reply.enhanced) == (451, "4.3.0"), reply
        wait_for_log(node, "hook rcpt_to timed out")


# --- a slow hook never blocks other connections -------------------------------------------------

GATED = """
import asyncio
from pathlib import Path

HERE = Path(__file__).parent


async def mail_from(conn, tx, sender):
    if sender.address.startswith("slow@"):
        (HERE / "slow-started").touch()
        # Wait (without blocking the event loop) until the test has finished another client's
        # whole transaction; capped so that a broken test cannot hang the node.
        for _ in range(600):
            if (HERE / "release").exists():
                break
            await asyncio.sleep(0.05)
"""


async def test_slow_hook_never_blocks_other_clients(tmp_path: Path) -> None:
    script = write_script(tmp_path, GATED)
    with running_node(tmp_path, server=script) as node:
        slow = aiosmtplib.SMTP(hostname="127.0.0.1", port=node.port, timeout=30, start_tls=False)
        await slow.connect()
        await slow.ehlo()
        slow_mail = asyncio.create_task(slow.mail("slow@sender.example"))
        await asyncio.to_thread(
            wait_until, lambda: (tmp_path / "slow-started").exists(), "the slow hook to start"
        )
        # While the slow client's hook is waiting, another client completes a transaction.
        errors, response = await aiosmtplib.send(
            b"Subject: fast\r\n\r\nfast\r\n",
            sender="fast@sender.example",
            recipients=["b@example.org"],
            hostname="127.0.0.1",
            port=node.port,
            timeout=15,
            start_tls=False,
        )
        assert errors == {}
        assert "queued as" in response
        assert not slow_mail.done()  # the slow client is still waiting for its MAIL reply
        assert [m.sender for m in queued(node)] == ["fast@sender.example"]
        (tmp_path / "release").touch()
        reply = await slow_mail
        assert reply.code == 250
        await slow.rcpt("b@example.org")
        await slow.data(b"Subject: slow\r\n\r\nslow\r\n")
        await slow.quit()
    assert sorted(m.sender for m in queued(node)) == ["fast@sender.example", "slow@sender.example"]


@pytest.mark.parametrize(
    "data",
    [b"Subject: with body\r\n\r\nbody\r\n", b"Subject: no blank line\r\nX-Other: 1\r\n"],
    ids=["with-body", "headers-only"],
)
def test_data_hook_sees_the_message_as_it_will_be_stored(tmp_path: Path, data: bytes) -> None:
    script = write_script(
        tmp_path,
        """
        from pathlib import Path

        async def data(conn, tx, message):
            raw = await message.raw()
            out = Path(__file__).parent / "seen"
            out.write_bytes(b"%d\\n" % message.size + raw)
        """,
    )
    with running_node(tmp_path, server=script) as node, RawClient(node.port) as client:
        client.greeting()
        client.ehlo()
        assert send_transaction(client, "a@sender.example", ["b@example.org"], data).code == 250
        size_line, _, raw = (tmp_path / "seen").read_bytes().partition(b"\n")
        stored = only_message(node)
        assert raw == stored_bytes(node, stored.id)
        assert int(size_line) == len(raw) == stored.size
