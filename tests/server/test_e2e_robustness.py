"""What a production node meets besides polite clients: broken TLS, vanishing clients, several
workers, AUTH back-ends that fail, and the disconnect hook."""

from __future__ import annotations

import base64
import json
import os
import signal
import ssl
from pathlib import Path

import pytest
from tests.server.conftest import (
    RawClient,
    limits,
    queued,
    running_edited_node,
    send_transaction,
    split_received,
    stored_bytes,
    wait_for_log,
    wait_until,
    write_script,
)
from tests.support.node import running_node


def test_garbage_instead_of_tls_handshake(tmp_path: Path, tls_keys: str) -> None:
    with running_node(tmp_path, server=tls_keys) as node:
        with RawClient(node.port) as client:
            client.greeting()
            client.ehlo()
            assert client.cmd("STARTTLS").code == 220
            client.send(b"GET / HTTP/1.0\r\n\r\n")
            client.read_until_closed()  # whatever TLS alert it sends, it hangs up
        # The node is unharmed.
        with RawClient(node.port) as other:
            other.greeting()
            other.ehlo()
            reply = send_transaction(other, "a@sender.example", ["b@example.org"], b"x\r\n")
            assert reply.code == 250
        assert [m.sender for m in queued(node)] == ["a@sender.example"]


def test_client_silent_after_starttls_is_dropped(tmp_path: Path, tls_keys: str) -> None:
    with (
        running_node(tmp_path, server=tls_keys, body=limits(command_timeout=1)) as node,
        RawClient(node.port) as client,
    ):
        client.greeting()
        client.ehlo()
        assert client.cmd("STARTTLS").code == 220
        client.read_until_closed()  # the handshake timeout closes the connection
        wait_for_log(node, "TLS handshake failed")


def test_client_vanishing_mid_data_queues_nothing(tmp_path: Path) -> None:
    with running_node(tmp_path) as node:
        with RawClient(node.port) as client:
            client.greeting()
            client.ehlo()
            assert client.cmd("MAIL FROM:<a@sender.example>").code == 250
            assert client.cmd("RCPT TO:<b@example.org>").code == 250
            assert client.cmd("DATA").code == 354
            client.send(b"Subject: cut\r\n\r\n" + b"x" * 200_000 + b"\r\n")  # spills to a file
        # A later, complete message proves the node went on (and gives the spool a commit).
        with RawClient(node.port) as client:
            client.greeting()
            client.ehlo()
            reply = send_transaction(client, "c@sender.example", ["d@example.org"], b"ok\r\n")
            assert reply.code == 250
        (message,) = queued(node)
        assert message.sender == "c@sender.example"
        assert stored_bytes(node, message.id).endswith(b"ok\r\n")
        # The abandoned message's spill file is gone: every body file belongs to a queued one.
        wait_until(
            lambda: all(path.name.endswith(message.id) for path in (node.spool / "data").iterdir()),
            "the abandoned spill file to be removed",
        )


def test_helo_client_gets_smtp_in_received(tmp_path: Path) -> None:
    with running_node(tmp_path) as node, RawClient(node.port) as client:
        client.greeting()
        assert client.cmd("HELO old.example").code == 250
        reply = send_transaction(client, "a@sender.example", ["b@example.org"], b"x\r\n")
        assert reply.code == 250
        (message,) = queued(node)
        received, rest = split_received(stored_bytes(node, message.id))
        assert received.startswith(b"Received: from old.example ([127.0.0.1])")
        assert f"with SMTP id {message.id}".encode() in received
        assert rest == b"x\r\n"


def test_auth_hook_failure_is_temporary(
    tmp_path: Path, tls_keys: str, client_context: ssl.SSLContext
) -> None:
    script = write_script(
        tmp_path,
        """
        async def auth(conn, credentials):
            raise ConnectionError("user database unreachable")
        """,
    )
    with running_node(tmp_path, server=tls_keys + script) as node, RawClient(node.port) as client:
        client.greeting()
        client.ehlo()
        assert client.cmd("STARTTLS").code == 220
        client.starttls(client_context)
        client.ehlo()
        plain = base64.b64encode(b"\0alice\0s3cret").decode()
        reply = client.cmd(f"AUTH PLAIN {plain}")
        # RFC 4954 §6: 454 4.7.0, the client may retry later; never 235.
        assert (reply.code, reply.enhanced) == (454, "4.7.0"), reply
        wait_for_log(node, "ConnectionError: user database unreachable")


def test_disconnect_hook_sees_connection_state(tmp_path: Path) -> None:
    script = write_script(
        tmp_path,
        """
        import json
        from pathlib import Path

        async def helo(conn, helo):
            conn.state["helo"] = helo.name

        async def mail_from(conn, tx, sender):
            conn.state.setdefault("senders", []).append(sender.address)

        async def disconnect(conn):
            if not conn.state:
                return  # the start-up probe, which never said EHLO
            record = {"id": conn.id, "state": conn.state, "ip": conn.remote_ip}
            (Path(__file__).parent / "disconnected.json").write_text(json.dumps(record))
        """,
    )
    with running_node(tmp_path, server=script) as node:
        with RawClient(node.port) as client:
            client.greeting()
            client.ehlo("state.example")
            assert client.cmd("MAIL FROM:<one@sender.example>").code == 250
            assert client.cmd("RSET").code == 250
            assert client.cmd("MAIL FROM:<two@sender.example>").code == 250
            assert client.cmd("QUIT").code == 221
        record_path = tmp_path / "disconnected.json"
        wait_until(record_path.exists, "the disconnect hook")
        record = json.loads(record_path.read_text())
        assert record["ip"] == "127.0.0.1"
        assert record["state"] == {
            "helo": "state.example",
            "senders": ["one@sender.example", "two@sender.example"],
        }


def test_several_workers_serve_reload_and_stop(tmp_path: Path) -> None:
    script = write_script(
        tmp_path,
        """
        from mailwarden.policy.actions import Accept

        async def mail_from(conn, tx, sender):
            return Accept(text="policy one")
        """,
    )

    def two_workers(text: str) -> str:
        return text.replace("workers = 1\n", "workers = 2\n")

    with running_edited_node(tmp_path, two_workers, server=script) as node:
        wait_for_log(node, "worker 1: server inbound listening")
        ids = []
        for n in range(8):
            with RawClient(node.port) as client:
                client.greeting()
                client.ehlo()
                reply = send_transaction(
                    client, f"s{n}@sender.example", ["b@example.org"], b"n %d\r\n" % n
                )
                assert reply.code == 250
                ids.append(reply.text.rsplit(" ", 1)[-1])
        assert sorted(m.id for m in queued(node)) == sorted(ids)
        listed = json.loads(node.mailwarden("queue", "list", "--json").stdout)
        assert sorted(entry["id"] for entry in listed) == sorted(ids)
        # `mailwarden reload` signals the supervisor, which passes it on to every worker.
        write_script(
            tmp_path,
            """
            from mailwarden.policy.actions import Accept

            async def mail_from(conn, tx, sender):
                return Accept(text="policy two")
            """,
        )
        assert node.mailwarden("reload").returncode == 0
        wait_for_log(node, "configuration and scripts reloaded", count=2)
        for _ in range(4):
            with RawClient(node.port) as client:
                client.greeting()
                client.ehlo()
                assert client.cmd("MAIL FROM:<a@sender.example>").text == "2.1.0 policy two"
        node.signal(signal.SIGTERM)
        assert node.process.wait(timeout=30) == 0


def _worker_cpus(supervisor: int) -> list[set[int]]:
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    return [os.sched_getaffinity(int(pid)) for pid in children]


@pytest.mark.parametrize("pinned", [True, False], ids=["pinned", "unpinned"])
def test_workers_are_pinned_to_distinct_cpus(tmp_path: Path, pinned: bool) -> None:
    allowed = sorted(os.sched_getaffinity(0))

    def two_workers(text: str) -> str:
        text = text.replace("workers = 1\n", "workers = 2\n")
        return text if pinned else text.replace("[node]\n", "[node]\npin_workers = false\n")

    with running_edited_node(tmp_path, two_workers) as node:
        wait_for_log(node, "worker 1: server inbound listening")
        cpus = _worker_cpus(node.process.pid)
        assert len(cpus) == 2
        if pinned:
            assert cpus == [{allowed[0]}, {allowed[1 % len(allowed)]}]
        else:
            assert cpus == [set(allowed), set(allowed)]
