"""Client certificates on the receiving side (issue 8): ``tls_client_certificate`` off, request
and require, checked against ``tls_client_ca``, and what hooks see of them in ``conn.tls``.

The clients are real: smtplib, swaks (``--tls-cert/--tls-key``) and ``openssl s_client
-starttls smtp``; the certificates come from trustme CAs (one the node trusts, one it does not).
"""

from __future__ import annotations

import datetime
import hashlib
import smtplib
import ssl
import subprocess
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from tests.server.conftest import RawClient, queued, wait_for_log
from tests.support.node import running_node
from tests.support.tls_peers import client_context, facts_script, recorded, write_pair

SERVER_NAME = "mx.test.example"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    """The CA of the node's own certificate and of the client certificates it trusts."""
    return trustme.CA(organization_name="Trusted Clients CA")


@pytest.fixture(scope="module")
def stranger() -> trustme.CA:
    """A CA the node does not trust."""
    return trustme.CA(organization_name="Stranger CA")


def server_keys(directory: Path, ca: trustme.CA, mode: str) -> str:
    """The ``[[servers]]`` TLS keys: a certificate, the client certificate mode, the CA file."""
    write_pair(directory, ca.issue_cert(SERVER_NAME, "127.0.0.1"), "server")
    ca.cert_pem.write_to_path(str(directory / "clients-ca.pem"))
    lines = 'tls_certificate = "server.pem"\ntls_key = "server.key"\n'
    lines += f'tls_client_certificate = "{mode}"\n'
    if mode != "off":
        lines += 'tls_client_ca = "clients-ca.pem"\n'
    return lines


def starttls_session(port: int, context: ssl.SSLContext) -> tuple[int, str]:
    """STARTTLS, EHLO and MAIL FROM with smtplib; the MAIL FROM reply."""
    with smtplib.SMTP("127.0.0.1", port, timeout=15) as smtp:
        smtp.ehlo("client.example")
        smtp.starttls(context=context)
        smtp.ehlo("client.example")
        code, text = smtp.mail("someone@client.example")
        return code, text.decode()


def last_certificate(directory: Path) -> dict | None:
    facts = [entry for entry in recorded(directory) if entry["hook"] == "mail_from"]
    assert facts, recorded(directory)
    assert facts[-1]["tls"] is not None
    return facts[-1]["tls"]["cert"]


def test_request_passes_a_verified_certificate_with_all_its_facts(
    tmp_path: Path, ca: trustme.CA
) -> None:
    client = ca.issue_cert("client.example", "relay@client.example", common_name="client.example")
    server = server_keys(tmp_path, ca, "request") + facts_script(tmp_path)
    with running_node(tmp_path, server=server) as node:
        code, _ = starttls_session(node.port, client_context(ca, client))
        assert code == 250
    cert = last_certificate(tmp_path)
    assert cert is not None
    expected = x509.load_pem_x509_certificate(client.cert_chain_pems[0].bytes())
    der = expected.public_bytes(Encoding.DER)
    assert cert["verified"] is True and cert["verify_error"] is None
    assert cert["cn"] == "client.example"
    assert cert["subject_parts"]["CN"] == ["client.example"]
    assert cert["issuer_parts"]["O"] == ["Trusted Clients CA"]
    assert cert["serial"] == f"{expected.serial_number:X}"
    assert cert["alt_names"] == ["DNS:client.example", "email:relay@client.example"]
    assert cert["sha256"] == hashlib.sha256(der).hexdigest()
    assert cert["sha1"] == hashlib.sha1(der).hexdigest()
    assert cert["pem"] == client.cert_chain_pems[0].bytes().decode()
    assert datetime.datetime.fromisoformat(cert["not_after"]) == expected.not_valid_after_utc
    assert datetime.datetime.fromisoformat(cert["not_before"]) == expected.not_valid_before_utc


def test_request_passes_an_unverified_certificate_to_the_script_with_the_reason(
    tmp_path: Path, ca: trustme.CA, stranger: trustme.CA
) -> None:
    client = stranger.issue_cert("other.example", common_name="other.example")
    server = server_keys(tmp_path, ca, "request") + facts_script(tmp_path)
    with running_node(tmp_path, server=server) as node:
        code, _ = starttls_session(node.port, client_context(ca, client))
        assert code == 250  # the script decides; this one lets everybody in
    cert = last_certificate(tmp_path)
    assert cert is not None
    assert cert["cn"] == "other.example"
    assert cert["verified"] is False
    assert cert["verify_error"] == "no trusted issuer found"


def test_request_marks_an_expired_certificate_as_expired(tmp_path: Path, ca: trustme.CA) -> None:
    now = datetime.datetime.now(datetime.UTC)
    client = ca.issue_cert(
        "old.example",
        not_before=now - datetime.timedelta(days=30),
        not_after=now - datetime.timedelta(days=1),
    )
    server = server_keys(tmp_path, ca, "request") + facts_script(tmp_path)
    with running_node(tmp_path, server=server) as node:
        assert starttls_session(node.port, client_context(ca, client))[0] == 250
    cert = last_certificate(tmp_path)
    assert cert is not None
    assert cert["verified"] is False
    assert cert["verify_error"] == "certificate has expired"


def test_request_without_a_client_certificate_shows_none(tmp_path: Path, ca: trustme.CA) -> None:
    server = server_keys(tmp_path, ca, "request") + facts_script(tmp_path)
    with running_node(tmp_path, server=server) as node:
        assert starttls_session(node.port, client_context(ca))[0] == 250
    assert last_certificate(tmp_path) is None
    facts = [entry["tls"] for entry in recorded(tmp_path) if entry["hook"] == "mail_from"]
    assert facts[-1]["subject_string"] is None


def test_off_does_not_ask_for_a_certificate(tmp_path: Path, ca: trustme.CA) -> None:
    client = ca.issue_cert("client.example")
    server = server_keys(tmp_path, ca, "off") + facts_script(tmp_path)
    with running_node(tmp_path, server=server) as node:
        assert starttls_session(node.port, client_context(ca, client))[0] == 250
    assert last_certificate(tmp_path) is None


def test_require_lets_a_verified_certificate_in(tmp_path: Path, ca: trustme.CA) -> None:
    client = ca.issue_cert("client.example", common_name="client.example")
    server = server_keys(tmp_path, ca, "require") + facts_script(tmp_path)
    with running_node(tmp_path, server=server) as node:
        assert starttls_session(node.port, client_context(ca, client))[0] == 250
    cert = last_certificate(tmp_path)
    assert cert is not None and cert["verified"] is True


def test_require_refuses_an_unverified_certificate_with_554_and_the_reason(
    tmp_path: Path, ca: trustme.CA, stranger: trustme.CA
) -> None:
    client = stranger.issue_cert("other.example")
    server = server_keys(tmp_path, ca, "require") + facts_script(tmp_path)
    with (
        running_node(tmp_path, server=server) as node,
        smtplib.SMTP("127.0.0.1", node.port, timeout=15) as smtp,
    ):
        smtp.ehlo("client.example")
        smtp.starttls(context=client_context(ca, client))
        code, text = smtp.ehlo("client.example")
        assert code == 554
        assert text.decode() == "5.7.1 Client certificate not verified: no trusted issuer found"
        wait_for_log(node, "client certificate refused")
    # No hook after the handshake ran for the refused client (the first connect is the
    # start-up probe's).
    hooks = [entry["hook"] for entry in recorded(tmp_path)]
    assert hooks.count("helo") == 1 and "mail_from" not in hooks


def test_require_refuses_an_expired_certificate_from_the_trusted_ca(
    tmp_path: Path, ca: trustme.CA
) -> None:
    now = datetime.datetime.now(datetime.UTC)
    client = ca.issue_cert(
        "old.example",
        not_before=now - datetime.timedelta(days=30),
        not_after=now - datetime.timedelta(days=1),
    )
    server = server_keys(tmp_path, ca, "require") + facts_script(tmp_path)
    with (
        running_node(tmp_path, server=server) as node,
        smtplib.SMTP("127.0.0.1", node.port, timeout=15) as smtp,
    ):
        smtp.ehlo("client.example")
        smtp.starttls(context=client_context(ca, client))
        code, text = smtp.ehlo("client.example")
        assert (code, text.decode()) == (
            554,
            "5.7.1 Client certificate not verified: certificate has expired",
        )
        with pytest.raises(smtplib.SMTPServerDisconnected):
            smtp.mail("someone@client.example")
    assert "mail_from" not in [entry["hook"] for entry in recorded(tmp_path)]


def test_require_refuses_a_client_that_never_starts_tls(tmp_path: Path, ca: trustme.CA) -> None:
    """Without STARTTLS there is no certificate to check: RFC 3207 §4's 530 for every command
    but the way to TLS, so nothing is queued in plaintext."""
    server = server_keys(tmp_path, ca, "require") + facts_script(tmp_path)
    with running_node(tmp_path, server=server) as node, RawClient(node.port) as client:
        client.greeting()
        assert "STARTTLS" in client.ehlo().text
        for command in ("MAIL FROM:<a@client.example>", "RCPT TO:<b@example.org>", "DATA"):
            reply = client.cmd(command)
            assert (reply.code, reply.text) == (530, "5.7.0 Must issue a STARTTLS command first")
        assert client.cmd("QUIT").code == 221
        assert queued(node) == []
    assert "mail_from" not in [entry["hook"] for entry in recorded(tmp_path)]


def test_require_refuses_a_client_without_certificate_in_the_handshake(
    tmp_path: Path, ca: trustme.CA
) -> None:
    server = server_keys(tmp_path, ca, "require")
    with (
        running_node(tmp_path, server=server) as node,
        smtplib.SMTP("127.0.0.1", node.port, timeout=15) as smtp,
    ):
        smtp.ehlo("client.example")
        # TLS 1.3 sends the client's (empty) certificate after the client considers the
        # handshake done: the server's alert then arrives with the first read.
        with pytest.raises((ssl.SSLError, smtplib.SMTPServerDisconnected, ConnectionError)):
            smtp.starttls(context=client_context(ca))
            smtp.ehlo("client.example")


def swaks(port: int, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "swaks",
            "--server",
            "127.0.0.1",
            "--port",
            str(port),
            "--from",
            "frank@client.example",
            "--to",
            "grace@example.org",
            *options,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_swaks_presents_its_certificate_with_tls_cert_and_tls_key(
    tmp_path: Path, ca: trustme.CA
) -> None:
    certificate, key = write_pair(tmp_path, ca.issue_cert("swaks.example"), "swaks")
    server = server_keys(tmp_path, ca, "require") + facts_script(tmp_path)
    with running_node(tmp_path, server=server) as node:
        done = swaks(node.port, "--tls", "--tls-cert", str(certificate), "--tls-key", str(key))
        assert done.returncode == 0, done.stdout + done.stderr
    cert = last_certificate(tmp_path)
    assert cert is not None and cert["verified"] is True
    assert cert["alt_names"] == ["DNS:swaks.example"]


def test_swaks_without_its_certificate_is_refused_by_require(
    tmp_path: Path, ca: trustme.CA
) -> None:
    server = server_keys(tmp_path, ca, "require")
    with running_node(tmp_path, server=server) as node:
        done = swaks(node.port, "--tls")
        assert done.returncode != 0
        assert "250 2.0.0" not in done.stdout  # nothing was queued


def test_openssl_s_client_starttls_as_a_real_peer(tmp_path: Path, ca: trustme.CA) -> None:
    certificate, key = write_pair(tmp_path, ca.issue_cert("openssl.example"), "peer")
    ca.cert_pem.write_to_path(str(tmp_path / "server-ca.pem"))
    server = server_keys(tmp_path, ca, "request") + facts_script(tmp_path)
    with running_node(tmp_path, server=server) as node:
        done = subprocess.run(
            [
                "openssl",
                "s_client",
                "-connect",
                f"127.0.0.1:{node.port}",
                "-starttls",
                "smtp",
                "-servername",
                SERVER_NAME,
                "-CAfile",
                str(tmp_path / "server-ca.pem"),
                "-verify_return_error",
                "-cert",
                str(certificate),
                "-key",
                str(key),
                "-quiet",
            ],
            input="EHLO openssl.example\r\nMAIL FROM:<o@openssl.example>\r\nQUIT\r\n",
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert "250 2.1.0" in done.stdout, done.stdout + done.stderr
    facts = [entry["tls"] for entry in recorded(tmp_path) if entry["hook"] == "mail_from"]
    assert facts[-1]["sni"] == SERVER_NAME
    assert facts[-1]["cert"]["verified"] is True
    assert facts[-1]["cert"]["alt_names"] == ["DNS:openssl.example"]
