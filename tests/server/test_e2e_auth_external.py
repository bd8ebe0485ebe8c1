"""AUTH EXTERNAL (RFC 4422 appendix A) bound to the verified TLS client certificate, against
``mailwarden run`` with trustme client certificates, by Python's ssl and ``openssl s_client``."""

from __future__ import annotations

import base64
import ssl
import subprocess
from pathlib import Path

import pytest
import trustme
from tests.server.conftest import RawClient, only_message, send_transaction, write_script
from tests.support.node import run_cli, running_node, write_config
from tests.support.tls_peers import client_context, write_pair

SERVER_NAME = "mx.test.example"
CLIENT_NAME = "relay.client.example"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA(organization_name="Trusted Clients CA")


@pytest.fixture(scope="module")
def stranger() -> trustme.CA:
    return trustme.CA(organization_name="Stranger CA")


def external_server(directory: Path, ca: trustme.CA, mode: str = "request") -> str:
    write_pair(directory, ca.issue_cert(SERVER_NAME, "127.0.0.1"), "server")
    ca.cert_pem.write_to_path(str(directory / "clients-ca.pem"))
    return (
        'tls_certificate = "server.pem"\ntls_key = "server.key"\n'
        f'tls_client_certificate = "{mode}"\ntls_client_ca = "clients-ca.pem"\n'
        'auth_mechanisms = ["PLAIN", "LOGIN", "EXTERNAL"]\ntrusted_networks = []\n'
    )


def tls_session(port: int, context: ssl.SSLContext) -> tuple[RawClient, tuple[str, ...]]:
    """A client after STARTTLS and the second EHLO; the AUTH line(s) of that EHLO."""
    client = RawClient(port)
    client.greeting()
    before = client.ehlo()
    assert not any("EXTERNAL" in line for line in before.lines), before
    assert client.cmd("STARTTLS").code == 220
    client.starttls(context, SERVER_NAME)
    after = client.ehlo()
    return client, tuple(line for line in after.lines if line.startswith("AUTH"))


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_verified_certificate_authenticates_and_relays(tmp_path: Path, ca: trustme.CA) -> None:
    cert = ca.issue_cert(CLIENT_NAME, common_name=CLIENT_NAME)
    with running_node(tmp_path, server=external_server(tmp_path, ca)) as node:
        client, auth = tls_session(node.port, client_context(ca, cert))
        with client:
            assert auth == ("AUTH PLAIN LOGIN EXTERNAL",)
            reply = client.cmd("AUTH EXTERNAL =")
            assert (reply.code, reply.enhanced) == (235, "2.7.0"), reply
            reply = send_transaction(
                client, "a@client.example", ["b@far.example"], b"Subject: x\r\n\r\nx\r\n"
            )
            assert reply.code == 250, reply
    assert only_message(node).auth == {"username": CLIENT_NAME, "mechanism": "EXTERNAL"}


def test_authorization_identity_must_be_the_certificate_s(tmp_path: Path, ca: trustme.CA) -> None:
    cert = ca.issue_cert(CLIENT_NAME, common_name=CLIENT_NAME)
    with running_node(tmp_path, server=external_server(tmp_path, ca)) as node:
        client, _ = tls_session(node.port, client_context(ca, cert))
        with client:
            reply = client.cmd(f"AUTH EXTERNAL {b64('postmaster@example.org')}")
            assert (reply.code, reply.enhanced) == (535, "5.7.8"), reply
            # Without an initial response: an empty challenge, then the (empty) message.
            reply = client.cmd("AUTH EXTERNAL")
            assert (reply.code, reply.text) == (334, "")
            reply = client.cmd(b64(CLIENT_NAME))
            assert (reply.code, reply.enhanced) == (235, "2.7.0"), reply


@pytest.mark.parametrize("who", ["stranger", "nobody"])
def test_not_offered_without_a_verified_certificate(
    tmp_path: Path, ca: trustme.CA, stranger: trustme.CA, who: str
) -> None:
    cert = stranger.issue_cert(CLIENT_NAME, common_name=CLIENT_NAME) if who == "stranger" else None
    with running_node(tmp_path, server=external_server(tmp_path, ca)) as node:
        client, auth = tls_session(node.port, client_context(ca, cert))
        with client:
            assert auth == ("AUTH PLAIN LOGIN",)
            reply = client.cmd("AUTH EXTERNAL =")
            assert (reply.code, reply.enhanced) == (504, "5.5.4"), reply


def test_the_auth_hook_decides_when_there_is_one(tmp_path: Path, ca: trustme.CA) -> None:
    script = write_script(
        tmp_path,
        """
        from mailwarden.policy.actions import Accept

        async def auth(conn, credentials):
            if credentials.mechanism == "EXTERNAL" and credentials.username == "allowed.example":
                assert conn.tls.peer_certificate.common_name == credentials.username
                return Accept()
            return None
        """,
    )
    server = external_server(tmp_path, ca) + script
    with running_node(tmp_path, server=server) as node:
        for name, code in (("allowed.example", 235), (CLIENT_NAME, 535)):
            cert = ca.issue_cert(name, common_name=name)
            client, _ = tls_session(node.port, client_context(ca, cert))
            with client:
                assert client.cmd("AUTH EXTERNAL =").code == code


def test_openssl_s_client_authenticates_with_external(tmp_path: Path, ca: trustme.CA) -> None:
    certificate, key = write_pair(
        tmp_path, ca.issue_cert(CLIENT_NAME, common_name=CLIENT_NAME), "peer"
    )
    ca.cert_pem.write_to_path(str(tmp_path / "server-ca.pem"))
    with running_node(tmp_path, server=external_server(tmp_path, ca)) as node:
        done = subprocess.run(
            [
                *("openssl", "s_client", "-connect", f"127.0.0.1:{node.port}"),
                *("-starttls", "smtp", "-servername", SERVER_NAME),
                *("-CAfile", str(tmp_path / "server-ca.pem"), "-verify_return_error"),
                *("-cert", str(certificate), "-key", str(key), "-quiet"),
            ],
            input="EHLO openssl.example\r\nAUTH EXTERNAL =\r\nQUIT\r\n",
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert "250 AUTH PLAIN LOGIN EXTERNAL" in done.stdout, done.stdout + done.stderr
    assert "235 2.7.0 Authentication successful" in done.stdout, done.stdout + done.stderr


def test_external_needs_client_certificates_configured(tmp_path: Path) -> None:
    config = write_config(tmp_path, 2525, server='auth_mechanisms = ["EXTERNAL"]\n')
    done = run_cli("config", "check", "--config", str(config))
    assert done.returncode != 0
    assert "auth_mechanisms" in done.stdout + done.stderr
    assert "tls_client_ca" in done.stdout + done.stderr
