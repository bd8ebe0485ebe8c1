"""AUTH (RFC 4954) over STARTTLS with real clients, and the built-in no-open-relay rule."""

from __future__ import annotations

import base64
import smtplib
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.server.conftest import RawClient, limits, only_message, queued, write_script
from tests.support.node import Node, running_node

AUTH_SCRIPT = """
from mailwarden.policy.actions import Accept

async def auth(conn, credentials):
    if (credentials.username, credentials.password) == ("alice", "s3cret"):
        return Accept()
    return None  # the default: authentication fails (535)
"""

UNTRUSTED = "trusted_networks = []\n"


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


PLAIN_OK = b64("\0alice\0s3cret")
PLAIN_BAD = b64("\0alice\0wrong")


@pytest.fixture
def auth_server(tmp_path: Path, tls_keys: str) -> str:
    return tls_keys + write_script(tmp_path, AUTH_SCRIPT)


def tls_client(port: int, context: ssl.SSLContext) -> RawClient:
    client = RawClient(port)
    client.greeting()
    client.ehlo()
    assert client.cmd("STARTTLS").code == 220
    client.starttls(context)
    client.ehlo()
    return client


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_smtplib_login_after_starttls(
    tmp_path: Path, auth_server: str, client_context: ssl.SSLContext, mechanism: str
) -> None:
    with (
        running_node(tmp_path, server=auth_server + UNTRUSTED) as node,
        smtplib.SMTP("127.0.0.1", node.port, timeout=15) as smtp,
    ):
        smtp.ehlo("client.example")
        smtp.starttls(context=client_context)
        smtp.ehlo("client.example")
        smtp.user, smtp.password = "alice", "s3cret"
        authobject = smtp.auth_plain if mechanism == "PLAIN" else smtp.auth_login
        code, text = smtp.auth(mechanism, authobject, initial_response_ok=mechanism == "PLAIN")
        assert code == 235, text
        # Authenticated: relaying to a foreign domain is allowed.
        refused = smtp.sendmail(
            "alice@example.org", ["friend@elsewhere.example"], b"Subject: x\r\n\r\nhi\r\n"
        )
        assert refused == {}
    message = only_message(node)
    assert message.auth == {"username": "alice", "mechanism": mechanism}
    assert [r.address for r in message.recipients] == ["friend@elsewhere.example"]


def test_smtplib_login_wrong_password(
    tmp_path: Path, auth_server: str, client_context: ssl.SSLContext
) -> None:
    with (
        running_node(tmp_path, server=auth_server) as node,
        smtplib.SMTP("127.0.0.1", node.port, timeout=15) as smtp,
    ):
        smtp.starttls(context=client_context)
        with pytest.raises(smtplib.SMTPAuthenticationError) as error:
            smtp.login("alice", "wrong")
        assert error.value.smtp_code == 535


def test_auth_protocol_errors(
    tmp_path: Path, auth_server: str, client_context: ssl.SSLContext
) -> None:
    with running_node(tmp_path, server=auth_server) as node:
        client = tls_client(node.port, client_context)
        with client:
            # '*' cancels the exchange (RFC 4954 §4): 501.
            assert client.cmd("AUTH PLAIN").code == 334
            reply = client.cmd("*")
            assert (reply.code, reply.enhanced) == (501, "5.0.0"), reply
            # Cancel in LOGIN after the username challenge, too.
            reply = client.cmd("AUTH LOGIN")
            assert reply.code == 334 and base64.b64decode(reply.text) == b"Username:"
            assert client.cmd(b64("alice")).code == 334
            assert client.cmd("*").code == 501
            # Bad base64, in the initial response and in an answer: 501.
            reply = client.cmd("AUTH PLAIN !!!notbase64")
            assert (reply.code, reply.enhanced) == (501, "5.5.2"), reply
            assert client.cmd("AUTH PLAIN").code == 334
            assert client.cmd("%%%").code == 501
            # Unknown mechanism: 504.
            assert client.cmd("AUTH CRAM-MD5").code == 504
            # AUTH inside a transaction: 503.
            assert client.cmd("MAIL FROM:<alice@example.org>").code == 250
            reply = client.cmd(f"AUTH PLAIN {PLAIN_OK}")
            assert (reply.code, reply.enhanced) == (503, "5.5.1"), reply
            assert client.cmd("RSET").code == 250
            # Success, then AUTH again: 503.
            reply = client.cmd(f"AUTH PLAIN {PLAIN_OK}")
            assert (reply.code, reply.enhanced) == (235, "2.7.0"), reply
            reply = client.cmd(f"AUTH PLAIN {PLAIN_OK}")
            assert (reply.code, reply.enhanced) == (503, "5.5.1"), reply
            assert client.cmd("QUIT").code == 221


def test_auth_before_tls_is_538(tmp_path: Path, auth_server: str) -> None:
    with running_node(tmp_path, server=auth_server) as node, RawClient(node.port) as client:
        client.greeting()
        ehlo = client.ehlo()
        assert not any(line.startswith("AUTH") for line in ehlo.lines)
        reply = client.cmd(f"AUTH PLAIN {PLAIN_OK}")
        assert (reply.code, reply.enhanced) == (538, "5.7.11"), reply


def test_auth_without_tls_when_configured(tmp_path: Path) -> None:
    server = write_script(tmp_path, AUTH_SCRIPT) + UNTRUSTED + "auth_requires_tls = false\n"
    with (
        running_node(tmp_path, server=server) as node,
        smtplib.SMTP("127.0.0.1", node.port, timeout=15) as smtp,
    ):
        smtp.ehlo("client.example")
        assert smtp.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
        code, _ = smtp.login("alice", "s3cret")
        assert code == 235


def test_repeated_auth_failures_disconnect(
    tmp_path: Path, auth_server: str, client_context: ssl.SSLContext
) -> None:
    body = limits(auth_failures=2)
    with running_node(tmp_path, server=auth_server, body=body) as node:
        client = tls_client(node.port, client_context)
        with client:
            reply = client.cmd(f"AUTH PLAIN {PLAIN_BAD}")
            assert (reply.code, reply.enhanced) == (535, "5.7.8"), reply
            reply = client.cmd(f"AUTH PLAIN {PLAIN_BAD}")
            assert reply.code == 535, reply
            closing = client.read_reply()
            assert (closing.code, closing.enhanced) == (421, "4.7.0"), closing
            assert client.read_until_closed() == b""


# --- no open relay ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def untrusted_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """127.0.0.1 outside trusted_networks; shared by tests that never queue anything."""
    with running_node(tmp_path_factory.mktemp("untrusted"), server=UNTRUSTED) as node:
        yield node


def test_untrusted_unauthenticated_client_cannot_relay(untrusted_node: Node) -> None:
    with RawClient(untrusted_node.port) as client:
        client.greeting()
        client.ehlo()
        assert client.cmd("MAIL FROM:<alice@sender.example>").code == 250
        reply = client.cmd("RCPT TO:<victim@elsewhere.example>")
        assert (reply.code, reply.enhanced) == (554, "5.7.1"), reply
        # Local domains (any case, trailing dot) and postmaster are accepted.
        assert client.cmd("RCPT TO:<bob@EXAMPLE.org>").code == 250
        assert client.cmd("RCPT TO:<postmaster>").code == 250
        assert client.cmd("RCPT TO:<Postmaster@example.org>").code == 250


@pytest.mark.parametrize(
    "recipient",
    [
        "user%other.example@example.org",
        "user!other.example@example.org",
        "other.example!user@example.org",
        '"user@other.example"@example.org',
        '"user%other.example"@example.org',
        "@example.org:user@other.example",
        "@example.org,@relay.example:user@other.example",
        "user@other.example@example.org",
        "user@example.org.other.example",
        "user@[192.0.2.1]",
    ],
)
def test_routing_tricks_never_open_a_relay(untrusted_node: Node, recipient: str) -> None:
    node = untrusted_node
    with RawClient(node.port) as client:
        client.greeting()
        client.ehlo()
        assert client.cmd("MAIL FROM:<alice@sender.example>").code == 250
        reply = client.cmd(f"RCPT TO:<{recipient}>")
        assert reply.code >= 500, reply
        assert reply.enhanced is not None and reply.enhanced[0] == "5"
        assert client.cmd("DATA").code == 554  # no valid recipients
        assert queued(node) == []


def test_trusted_network_may_relay(tmp_path: Path) -> None:
    server = 'trusted_networks = ["127.0.0.0/8"]\n'
    with (
        running_node(tmp_path, server=server) as node,
        smtplib.SMTP("127.0.0.1", node.port, timeout=15) as smtp,
    ):
        refused = smtp.sendmail(
            "app@example.org", ["customer@elsewhere.example"], b"Subject: r\r\n\r\nhi\r\n"
        )
        assert refused == {}
    assert [r.address for r in only_message(node).recipients] == ["customer@elsewhere.example"]


def test_untrusted_source_address_is_not_trusted(tmp_path: Path) -> None:
    """Trust follows the configured network, not "it's loopback": 127.0.0.2 is outside /32."""
    server = 'trusted_networks = ["127.0.0.1/32"]\n'
    with running_node(tmp_path, server=server) as node:
        with RawClient(node.port, source="127.0.0.2") as outsider:
            outsider.greeting()
            outsider.ehlo()
            assert outsider.cmd("MAIL FROM:<a@sender.example>").code == 250
            assert outsider.cmd("RCPT TO:<x@elsewhere.example>").code == 554
        with RawClient(node.port) as insider:
            insider.greeting()
            insider.ehlo()
            assert insider.cmd("MAIL FROM:<a@sender.example>").code == 250
            assert insider.cmd("RCPT TO:<x@elsewhere.example>").code == 250


def test_policy_script_cannot_open_the_relay(tmp_path: Path) -> None:
    """The anti-relay rule runs before the rcpt_to hook: even an accept-all script is bound."""
    script = write_script(
        tmp_path,
        """
        from mailwarden.policy.actions import Accept

        async def rcpt_to(conn, tx, recipient):
            return Accept()
        """,
    )
    with running_node(tmp_path, server=script + UNTRUSTED) as node, RawClient(node.port) as client:
        client.greeting()
        client.ehlo()
        assert client.cmd("MAIL FROM:<a@sender.example>").code == 250
        assert client.cmd("RCPT TO:<x@elsewhere.example>").code == 554
