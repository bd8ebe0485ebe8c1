"""The listener's TLS settings (issue 8, RFC 8314, RFC 6066): implicit TLS from the first byte,
certificates chosen by SNI, ``tls_min_version``, ``tls_ciphers``, certificates reloaded on SIGHUP
while sessions go on, and handshakes that fail or are abandoned half way."""

from __future__ import annotations

import signal
import smtplib
import socket
import ssl
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from tests.server.conftest import RawClient, only_message, wait_for_log
from tests.support.node import Node, running_node, wait_for_ready
from tests.support.tls_peers import client_context, facts_script, recorded, write_pair

SERVER_NAME = "mx.test.example"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def pair_keys(directory: Path, ca: trustme.CA, *names: str) -> str:
    """One certificate for ``names`` and 127.0.0.1 (what smtplib verifies), as the node's."""
    write_pair(directory, ca.issue_cert(*names, "127.0.0.1"), "server")
    return 'tls_certificate = "server.pem"\ntls_key = "server.key"\n'


@contextmanager
def implicit_node(directory: Path, server: str) -> Iterator[Node]:
    """A node whose listener speaks TLS from the first byte. The usual start-up probe reads a
    plaintext greeting, which such a listener never sends: wait for the ready line instead."""
    with running_node(directory, server="tls_implicit = true\n" + server, wait=False) as node:
        wait_for_ready(node)
        yield node


def served_certificate(port: int, server_name: str | None) -> x509.Certificate:
    """The certificate the node serves after STARTTLS to a client asking for ``server_name``
    by SNI (None: no SNI), read without verifying it."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with RawClient(port) as client:
        client.greeting()
        client.ehlo()
        assert client.cmd("STARTTLS").code == 220
        client.starttls(context, server_hostname=server_name)  # type: ignore[arg-type]
        der = client.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
    assert der is not None
    return x509.load_der_x509_certificate(der)


def names_of(certificate: x509.Certificate) -> list[str]:
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.DNSName)


# --- implicit TLS (RFC 8314) ------------------------------------------------------------------


def test_smtplib_smtp_ssl_on_an_implicit_tls_listener(tmp_path: Path, ca: trustme.CA) -> None:
    server = pair_keys(tmp_path, ca, SERVER_NAME)
    with (
        implicit_node(tmp_path, server) as node,
        smtplib.SMTP_SSL("127.0.0.1", node.port, context=client_context(ca), timeout=15) as smtp,
    ):
        code, _ = smtp.ehlo("client.example")
        assert code == 250
        assert not smtp.has_extn("starttls")  # TLS is there already (RFC 8314 §3.3)
        assert smtp.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]  # auth_requires_tls met
        code, text = smtp.docmd("STARTTLS")
        assert (code, text) == (503, b"5.5.1 TLS already active")
        smtp.sendmail("alice@client.example", ["bob@example.org"], b"Subject: 465\r\n\r\nhi\r\n")
        stored = only_message(node)
        assert stored.tls is not None and stored.tls["protocol"] == "TLSv1.3"


def test_swaks_tlsc_on_an_implicit_tls_listener(tmp_path: Path, ca: trustme.CA) -> None:
    server = pair_keys(tmp_path, ca, SERVER_NAME)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    with implicit_node(tmp_path, server) as node:
        done = subprocess.run(
            [
                "swaks",
                "--server",
                "127.0.0.1",
                "--port",
                str(node.port),
                "--from",
                "frank@client.example",
                "--to",
                "grace@example.org",
                "--tlsc",
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
        assert done.returncode == 0, done.stdout + done.stderr
        assert only_message(node).tls is not None


def test_implicit_tls_require_refuses_a_stranger_certificate_instead_of_greeting(
    tmp_path: Path, ca: trustme.CA
) -> None:
    stranger = trustme.CA(organization_name="Stranger CA")
    ca.cert_pem.write_to_path(str(tmp_path / "clients-ca.pem"))
    server = pair_keys(tmp_path, ca, SERVER_NAME)
    server += 'tls_client_certificate = "require"\ntls_client_ca = "clients-ca.pem"\n'
    context = client_context(ca)
    stranger.issue_cert("other.example").configure_cert(context)
    with (
        implicit_node(tmp_path, server) as node,
        socket.create_connection(("127.0.0.1", node.port), timeout=15) as raw,
        context.wrap_socket(raw, server_hostname=SERVER_NAME) as tls,
    ):
        received = b""
        while chunk := tls.recv(4096):
            received += chunk
        assert received == b"554 5.7.1 Client certificate not verified: no trusted issuer found\r\n"
        wait_for_log(node, "client certificate refused")


def test_plaintext_client_on_an_implicit_tls_listener_gets_no_plaintext_reply(
    tmp_path: Path, ca: trustme.CA
) -> None:
    server = pair_keys(tmp_path, ca, SERVER_NAME)
    with implicit_node(tmp_path, server) as node, RawClient(node.port) as client:
        client.send(b"EHLO plain.example\r\n")
        rest = client.read_until_closed()
        assert b"220" not in rest and b"250" not in rest
        wait_for_log(node, "TLS handshake failed")


def test_client_dropping_mid_handshake_leaves_the_listener_serving(
    tmp_path: Path, ca: trustme.CA
) -> None:
    server = pair_keys(tmp_path, ca, SERVER_NAME) + facts_script(tmp_path)
    with implicit_node(tmp_path, server) as node:
        # The first bytes of a TLS record carrying a ClientHello, then nothing: gone.
        with socket.create_connection(("127.0.0.1", node.port), timeout=15) as sock:
            sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        wait_for_log(node, "TLS handshake failed")
        with smtplib.SMTP_SSL(
            "127.0.0.1", node.port, context=client_context(ca), timeout=15
        ) as smtp:
            assert smtp.ehlo("client.example")[0] == 250
    # Only the finished handshake reached the hooks: connect ran after TLS, with conn.tls.
    connects = [entry["tls"] for entry in recorded(tmp_path) if entry["hook"] == "connect"]
    assert len(connects) == 1 and connects[0]["protocol"] == "TLSv1.3"


def test_client_dropping_mid_handshake_after_starttls(tmp_path: Path, ca: trustme.CA) -> None:
    server = pair_keys(tmp_path, ca, SERVER_NAME)
    with running_node(tmp_path, server=server) as node:
        with RawClient(node.port) as client:
            client.greeting()
            client.ehlo()
            assert client.cmd("STARTTLS").code == 220
            client.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        wait_for_log(node, "TLS handshake failed")
        with smtplib.SMTP("127.0.0.1", node.port, timeout=15) as smtp:
            smtp.starttls(context=client_context(ca))
            assert smtp.ehlo("client.example")[0] == 250


# --- SNI (RFC 6066 §3) ------------------------------------------------------------------------


@pytest.fixture
def sni_node(tmp_path: Path, ca: trustme.CA) -> Iterator[Node]:
    write_pair(tmp_path, ca.issue_cert(SERVER_NAME), "default")
    write_pair(tmp_path, ca.issue_cert("mail.other.example", "smtp.other.example"), "other")
    write_pair(tmp_path, ca.issue_cert("named.example"), "third")
    server = (
        'tls_certificate = "default.pem"\ntls_key = "default.key"\n'
        + facts_script(tmp_path)
        + "[[servers.tls_certificates]]\n"
        + 'certificate = "other.pem"\nkey = "other.key"\n'
        + "[[servers.tls_certificates]]\n"
        + 'certificate = "third.pem"\nkey = "third.key"\nnames = ["*.third.example"]\n'
    )
    with running_node(tmp_path, server=server) as node:
        yield node


@pytest.mark.parametrize(
    ("asked", "served"),
    [
        ("mail.other.example", ["mail.other.example", "smtp.other.example"]),
        ("SMTP.Other.Example", ["mail.other.example", "smtp.other.example"]),
        ("a.third.example", ["named.example"]),  # names = [...] instead of the certificate's
        ("named.example", [SERVER_NAME]),  # given names replace the certificate's own
        ("b.a.third.example", [SERVER_NAME]),  # a wildcard covers one label only
        ("unknown.example", [SERVER_NAME]),
        (None, [SERVER_NAME]),
    ],
)
def test_sni_picks_the_certificate(sni_node: Node, asked: str | None, served: list[str]) -> None:
    assert names_of(served_certificate(sni_node.port, asked)) == served


def test_hooks_see_the_sni_name(sni_node: Node, tmp_path: Path, ca: trustme.CA) -> None:
    with smtplib.SMTP("127.0.0.1", sni_node.port, timeout=15) as smtp:
        smtp._host = "smtp.other.example"
        smtp.starttls(context=client_context(ca))
        smtp.ehlo("client.example")
        assert smtp.mail("x@client.example")[0] == 250
    facts = [entry["tls"] for entry in recorded(tmp_path) if entry["hook"] == "mail_from"]
    assert facts[-1]["sni"] == "smtp.other.example"


# --- versions and ciphers ---------------------------------------------------------------------


def test_min_version_13_refuses_a_tls_12_client(tmp_path: Path, ca: trustme.CA) -> None:
    server = pair_keys(tmp_path, ca, SERVER_NAME) + 'tls_min_version = "TLSv1.3"\n'
    old = client_context(ca)
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    with running_node(tmp_path, server=server) as node:
        with smtplib.SMTP("127.0.0.1", node.port, timeout=15) as smtp:
            smtp.ehlo("client.example")
            with pytest.raises(ssl.SSLError):
                smtp.starttls(context=old)
        wait_for_log(node, "TLS handshake failed")
        with smtplib.SMTP("127.0.0.1", node.port, timeout=15) as smtp:
            smtp.starttls(context=client_context(ca))
            assert smtp.sock.version() == "TLSv1.3"  # type: ignore[union-attr]


def test_default_min_version_accepts_tls_12(tmp_path: Path, ca: trustme.CA) -> None:
    old = client_context(ca)
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    with (
        running_node(tmp_path, server=pair_keys(tmp_path, ca, SERVER_NAME)) as node,
        smtplib.SMTP("127.0.0.1", node.port, timeout=15) as smtp,
    ):
        smtp.starttls(context=old)
        assert smtp.sock.version() == "TLSv1.2"  # type: ignore[union-attr]


def test_tls_ciphers_limit_what_tls_12_clients_get(tmp_path: Path, ca: trustme.CA) -> None:
    # trustme's keys are ECDSA: the suites below are the ECDSA ones.
    chosen = "ECDHE-ECDSA-AES256-GCM-SHA384"
    server = pair_keys(tmp_path, ca, SERVER_NAME) + f'tls_ciphers = "{chosen}"\n'
    with running_node(tmp_path, server=server) as node:
        context = client_context(ca)
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        with smtplib.SMTP("127.0.0.1", node.port, timeout=15) as smtp:
            smtp.starttls(context=context)
            assert smtp.sock.cipher()[0] == chosen  # type: ignore[union-attr]
        other = client_context(ca)
        other.maximum_version = ssl.TLSVersion.TLSv1_2
        other.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")
        with (
            smtplib.SMTP("127.0.0.1", node.port, timeout=15) as smtp,
            pytest.raises(ssl.SSLError),
        ):
            smtp.starttls(context=other)


def test_unknown_cipher_list_stops_the_start_naming_the_key(tmp_path: Path, ca: trustme.CA) -> None:
    server = pair_keys(tmp_path, ca, SERVER_NAME) + 'tls_ciphers = "NO-SUCH-CIPHER"\n'
    with running_node(tmp_path, server=server, wait=False) as node:
        assert node.process.wait(timeout=30) != 0
        assert "servers[0].tls_ciphers" in node.log()
        assert "NO-SUCH-CIPHER" in node.log()


# --- reload -----------------------------------------------------------------------------------


def test_sighup_serves_a_new_certificate_while_an_open_session_goes_on(
    tmp_path: Path, ca: trustme.CA
) -> None:
    server = pair_keys(tmp_path, ca, SERVER_NAME, "old.test.example")
    with running_node(tmp_path, server=server) as node:
        old = served_certificate(node.port, SERVER_NAME)
        with smtplib.SMTP("127.0.0.1", node.port, timeout=15) as session:
            session.starttls(context=client_context(ca))
            session.ehlo("client.example")
            write_pair(
                tmp_path, ca.issue_cert(SERVER_NAME, "new.test.example", "127.0.0.1"), "server"
            )
            node.signal(signal.SIGHUP)
            wait_for_log(node, "reloaded")
            new = served_certificate(node.port, SERVER_NAME)
            assert names_of(old) == [SERVER_NAME, "old.test.example"]
            assert names_of(new) == [SERVER_NAME, "new.test.example"]
            # The session that started before the reload goes on, over its old TLS session.
            session.sendmail("a@client.example", ["b@example.org"], b"Subject: on\r\n\r\nx\r\n")
        assert only_message(node).tls is not None


def test_sighup_with_a_broken_certificate_keeps_serving_the_old_one(
    tmp_path: Path, ca: trustme.CA
) -> None:
    server = pair_keys(tmp_path, ca, SERVER_NAME, "old.test.example")
    with running_node(tmp_path, server=server) as node:
        (tmp_path / "server.pem").write_text("not a certificate\n")
        node.signal(signal.SIGHUP)
        wait_for_log(node, "reload failed")
        assert "servers[inbound].tls_certificate" in node.log()
        assert names_of(served_certificate(node.port, SERVER_NAME))[1] == "old.test.example"
