"""TLS 1.3 session resumption on the receiving side (issue 8, RFC 8446 §2.2): a client that
offers the ticket of its previous connection resumes on whichever worker it reaches, and after
a reload (smtp/tls_tickets.py: one ticket key per node)."""

from __future__ import annotations

import signal
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme
from tests.server.conftest import running_edited_node, wait_for_log, write_script
from tests.support.node import running_node
from tests.support.tls_peers import client_context, facts_script, recorded, write_pair

SERVER_NAME = "mx.test.example"

# Says which worker process answered, in the reply to MAIL.
WORKER_SCRIPT = """
import os

from mailwarden.policy.actions import Accept

async def mail_from(conn, tx, sender):
    return Accept(text=f"worker {os.getpid()}")
"""


@dataclass
class Visit:
    reused: bool
    session: ssl.SSLSession
    mail_reply: str


def read_reply(sock: socket.socket) -> str:
    data = b""
    while True:
        chunk = sock.recv(4096)
        assert chunk, f"closed after {data!r}"
        data += chunk
        lines = data.split(b"\r\n")
        if len(lines) > 1 and lines[-2][3:4] == b" ":
            return data.decode()


def visit(port: int, context: ssl.SSLContext, session: ssl.SSLSession | None) -> Visit:
    """One STARTTLS connection offering ``session``; sends MAIL and QUIT."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as raw:
        assert read_reply(raw).startswith("220")
        raw.sendall(b"EHLO client.example\r\n")
        assert read_reply(raw).startswith("250")
        raw.sendall(b"STARTTLS\r\n")
        assert read_reply(raw).startswith("220")
        with context.wrap_socket(raw, server_hostname=SERVER_NAME, session=session) as tls:
            tls.sendall(b"EHLO client.example\r\n")
            assert read_reply(tls).startswith("250")  # the tickets come with it
            tls.sendall(b"MAIL FROM:<a@client.example>\r\n")
            mail = read_reply(tls)
            tls.sendall(b"QUIT\r\n")
            read_reply(tls)
            assert tls.session is not None
            return Visit(tls.session_reused, tls.session, mail)


def tls_lines(directory: Path) -> str:
    write_pair(directory, trustme.CA().issue_cert(SERVER_NAME, "127.0.0.1"), "server")
    return 'tls_certificate = "server.pem"\ntls_key = "server.key"\n'


def test_a_ticket_from_one_worker_resumes_on_the_other(tmp_path: Path) -> None:
    server = tls_lines(tmp_path) + write_script(tmp_path, WORKER_SCRIPT)
    context = client_context(trustme.CA())  # verification is not what this is about
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE

    def two_workers(text: str) -> str:
        return text.replace("workers = 1\n", "workers = 2\n")

    with running_edited_node(tmp_path, two_workers, server=server) as node:
        wait_for_log(node, "worker 1: server inbound listening")
        first = visit(node.port, context, None)
        assert not first.reused
        session, workers, resumed = first.session, {first.mail_reply}, []
        for _ in range(16):  # SO_REUSEPORT spreads connections over both workers
            current = visit(node.port, context, session)
            resumed.append(current.reused)
            workers.add(current.mail_reply)
            session = current.session
        assert len(workers) == 2, workers
        assert all(resumed), resumed


def test_a_ticket_issued_before_a_reload_resumes_after_it(tmp_path: Path) -> None:
    context = client_context(trustme.CA())
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with running_node(tmp_path, server=tls_lines(tmp_path)) as node:
        before = visit(node.port, context, None)
        node.signal(signal.SIGHUP)
        wait_for_log(node, "reloaded")
        after = visit(node.port, context, before.session)
        assert after.reused


def test_a_resumed_session_still_shows_the_verified_client_certificate(tmp_path: Path) -> None:
    # Under "request" the certificate is verified after the handshake; a resumed handshake
    # carries no certificate message, yet the hooks must see the one the session was made with.
    ca = trustme.CA()
    (tmp_path / "clients-ca.pem").write_bytes(ca.cert_pem.bytes())
    server = (
        tls_lines(tmp_path)
        + facts_script(tmp_path)
        + 'tls_client_certificate = "request"\ntls_client_ca = "clients-ca.pem"\n'
    )
    context = client_context(ca, ca.issue_cert("client.example"))
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with running_node(tmp_path, server=server) as node:
        first = visit(node.port, context, None)
        again = visit(node.port, context, first.session)
    assert again.reused
    seen = [entry["tls"]["cert"] for entry in recorded(tmp_path) if entry["hook"] == "mail_from"]
    assert len(seen) == 2
    assert [cert["verified"] for cert in seen] == [True, True]
    assert seen[0]["sha256"] == seen[1]["sha256"]
