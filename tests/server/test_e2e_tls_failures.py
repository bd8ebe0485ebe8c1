"""Receiving-side TLS as real peers see it when things go wrong (issue 8, "Tests"): server
certificates a verifying client refuses (openssl s_client, swaks), SNI chosen through
``openssl s_client -servername``, a handshake the listener refuses, handshakes abandoned half
way (their connection slots come back), and plaintext sent after STARTTLS's 220 (RFC 3207 §5:
never executed). The pipelined STARTTLS injection is in test_e2e_hardening.py."""

from __future__ import annotations

import datetime
import re
import smtplib
import ssl
import subprocess
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from tests.server.conftest import RawClient, limits, queued, wait_for_log
from tests.support.node import Node, running_node
from tests.support.tls_peers import client_context, write_pair

SERVER_NAME = "mx.test.example"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def keys_for(directory: Path, cert: trustme.LeafCert, ca: trustme.CA) -> str:
    """``cert`` as the node's certificate; the CA as ``ca.pem`` for the clients."""
    write_pair(directory, cert, "server")
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    return 'tls_certificate = "server.pem"\ntls_key = "server.key"\n'


def expired(ca: trustme.CA) -> trustme.LeafCert:
    now = datetime.datetime.now(datetime.UTC)
    return ca.issue_cert(
        SERVER_NAME,
        not_before=now - datetime.timedelta(days=30),
        not_after=now - datetime.timedelta(days=1),
    )


def s_client(port: int, directory: Path, *options: str, commands: str = "QUIT\r\n") -> str:
    """``openssl s_client -starttls smtp`` verifying against ``ca.pem``; stdout and stderr."""
    done = subprocess.run(
        [
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{port}",
            "-starttls",
            "smtp",
            "-CAfile",
            str(directory / "ca.pem"),
            *options,
        ],
        input=commands,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.stdout + done.stderr


def still_accepts(node: Node, ca: trustme.CA) -> None:
    """The listener serves the next client, over TLS, to the end of a transaction."""
    context = client_context(ca)
    context.check_hostname = False  # the certificate under test may be the refused one
    context.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", node.port, timeout=15) as smtp:
        smtp.starttls(context=context)
        smtp.sendmail("a@client.example", ["b@example.org"], b"Subject: next\r\n\r\nx\r\n")


# --- server certificates a verifying client refuses ------------------------------------------


@pytest.mark.parametrize(
    ("which", "complaint"),
    [("expired", "certificate has expired"), ("wrong name", "hostname mismatch")],
)
def test_openssl_s_client_refuses_a_bad_server_certificate(
    tmp_path: Path, ca: trustme.CA, which: str, complaint: str
) -> None:
    cert = expired(ca) if which == "expired" else ca.issue_cert("other.example")
    with running_node(tmp_path, server=keys_for(tmp_path, cert, ca)) as node:
        out = s_client(
            node.port,
            tmp_path,
            "-verify_return_error",
            "-verify_hostname",
            SERVER_NAME,
            commands="EHLO openssl.example\r\nMAIL FROM:<o@openssl.example>\r\nQUIT\r\n",
        )
        assert complaint in out, out
        assert "250 2.1.0" not in out  # the client gave up before any command over TLS
        wait_for_log(node, "TLS handshake failed")
        still_accepts(node, ca)
        assert [m.sender for m in queued(node)] == ["a@client.example"]


def test_openssl_s_client_accepts_the_right_certificate(tmp_path: Path, ca: trustme.CA) -> None:
    # The control for the refusals above: same client, same options, a good certificate.
    cert = ca.issue_cert(SERVER_NAME)
    with running_node(tmp_path, server=keys_for(tmp_path, cert, ca)) as node:
        out = s_client(
            node.port,
            tmp_path,
            "-verify_return_error",
            "-verify_hostname",
            SERVER_NAME,
            "-quiet",
            commands="EHLO openssl.example\r\nMAIL FROM:<o@openssl.example>\r\nQUIT\r\n",
        )
    assert "250 2.1.0" in out, out


def test_swaks_tls_verify_refuses_an_expired_server_certificate(
    tmp_path: Path, ca: trustme.CA
) -> None:
    # Only the expired case: Debian's swaks (20201014) checks the chain and dates under
    # --tls-verify, not the name (openssl s_client covers the wrong name above).
    with running_node(tmp_path, server=keys_for(tmp_path, expired(ca), ca)) as node:
        done = subprocess.run(
            [
                "swaks",
                "--server",
                f"127.0.0.1:{node.port}",
                "--to",
                "b@example.org",
                "--from",
                "a@client.example",
                "--tls",
                "--tls-verify",
                "--tls-ca-path",
                str(tmp_path / "ca.pem"),
                "--tls-sni",
                SERVER_NAME,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode != 0
        assert "TLS startup failed" in done.stdout + done.stderr, done.stdout + done.stderr
        assert queued(node) == []


# --- SNI through a real client ---------------------------------------------------------------


def test_openssl_s_client_servername_picks_the_certificate(tmp_path: Path, ca: trustme.CA) -> None:
    write_pair(tmp_path, ca.issue_cert(SERVER_NAME), "default")
    write_pair(tmp_path, ca.issue_cert("mail.other.example"), "other")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    server = (
        'tls_certificate = "default.pem"\ntls_key = "default.key"\n'
        '[[servers.tls_certificates]]\ncertificate = "other.pem"\nkey = "other.key"\n'
    )
    with running_node(tmp_path, server=server) as node:
        served = {
            name: served_names(
                s_client(
                    node.port,
                    tmp_path,
                    "-servername",
                    name,
                    "-verify_return_error",
                    "-verify_hostname",
                    name,
                )
            )
            for name in ("mail.other.example", SERVER_NAME)
        }
    assert served == {"mail.other.example": ["mail.other.example"], SERVER_NAME: [SERVER_NAME]}


def served_names(out: str) -> list[str]:
    """The DNS names of the server certificate s_client printed."""
    match = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", out, re.S)
    assert match, out
    certificate = x509.load_pem_x509_certificate(match.group(0).encode())
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "Verify return code: 0 (ok)" in out, out
    return san.get_values_for_type(x509.DNSName)


# --- a handshake the listener refuses --------------------------------------------------------


def test_openssl_s_client_with_only_a_refused_cipher_is_closed_cleanly(
    tmp_path: Path, ca: trustme.CA
) -> None:
    server = keys_for(tmp_path, ca.issue_cert(SERVER_NAME), ca)
    server += 'tls_ciphers = "ECDHE-ECDSA-AES256-GCM-SHA384"\n'
    with running_node(tmp_path, server=server) as node:
        out = s_client(node.port, tmp_path, "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256")
        # No cipher agreed, no certificate sent: the client got nothing over TLS. (The
        # listener closes without a TLS alert: asyncio's and uvloop's TLS layers drop the
        # alert OpenSSL wrote when the handshake fails.)
        assert "Cipher is (NONE)" in out and "no peer certificate" in out, out
        assert "250" not in out
        # The operator sees why.
        wait_for_log(node, "TLS handshake failed")
        assert "NO_SHARED_CIPHER" in node.log().upper().replace(" ", "_"), node.log()
        still_accepts(node, ca)


# --- handshakes abandoned half way -----------------------------------------------------------


def client_hello() -> bytes:
    """The first flight of a real TLS 1.3 client, made without a socket."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=SERVER_NAME)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def abandon_after_starttls(port: int, how: str) -> None:
    with RawClient(port) as client:
        client.greeting()
        client.ehlo()
        assert client.cmd("STARTTLS").code == 220
        if how == "whole ClientHello":
            client.send(client_hello())
            assert client.sock.recv(5)[:1] == b"\x16"  # the server's handshake has begun
        elif how == "part of a ClientHello":
            client.send(client_hello()[:20])
        # "nothing": gone straight after the 220


def test_abandoned_handshakes_give_their_connection_slots_back(
    tmp_path: Path, ca: trustme.CA
) -> None:
    server = keys_for(tmp_path, ca.issue_cert(SERVER_NAME), ca)
    body = limits(connections_per_ip=2)
    ways = ["whole ClientHello", "part of a ClientHello", "nothing"] * 2
    with running_node(tmp_path, server=server, body=body) as node:
        for how in ways:
            abandon_after_starttls(node.port, how)
        wait_for_log(node, "TLS handshake failed", count=len(ways))
        # Had any abandoned session kept its slot, one of these two would get 421.
        with RawClient(node.port) as first, RawClient(node.port) as second:
            assert first.greeting().code == 220
            assert second.greeting().code == 220
            with RawClient(node.port) as third:  # the limit itself is still there
                assert third.read_reply().code == 421


# --- plaintext after STARTTLS (RFC 3207 §5) --------------------------------------------------


def test_plaintext_after_the_220_to_starttls_is_never_executed(
    tmp_path: Path, ca: trustme.CA
) -> None:
    server = keys_for(tmp_path, ca.issue_cert(SERVER_NAME), ca)
    with running_node(tmp_path, server=server) as node:
        with RawClient(node.port) as client:
            client.greeting()
            client.ehlo()
            assert client.cmd("STARTTLS").code == 220
            # Sent after the 220, where the TLS handshake belongs: a whole transaction.
            client.send(
                b"MAIL FROM:<plain@evil.example>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n"
                b"Subject: plain\r\n\r\nnot over tls\r\n.\r\nQUIT\r\n"
            )
            rest = client.read_until_closed()
            assert b"250" not in rest and b"354" not in rest
        wait_for_log(node, "TLS handshake failed")
        still_accepts(node, ca)
        assert [m.sender for m in queued(node)] == ["a@client.example"]
