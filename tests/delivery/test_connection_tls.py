"""STARTTLS per TlsPolicy and AUTH against a real ``mailwarden run`` node with a trustme
certificate for mx.test.example (untrusted by the system store), over real sockets."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from tests.support.node import running_node

from mailwarden.delivery.connection import ConnectOptions, OutboundConnection
from mailwarden.delivery.errors import DeliveryError
from mailwarden.delivery.mx import Target
from mailwarden.delivery.tls import TlsMode, TlsPolicy
from mailwarden.smtp.client import Envelope
from mailwarden.spool.reader import iter_messages

PEER_NAME = "mx.test.example"  # what the conftest issues the certificate for
MESSAGE = b"Subject: tls\r\n\r\nover TLS\r\n"
ENVELOPE = Envelope("s@example.com", ["r@example.org"])

AUTH_SCRIPT = """
from mailwarden.policy.actions import Accept

async def auth(conn, credentials):
    if (credentials.username, credentials.password) == ("alice", "s3cret"):
        return Accept()
    return None
"""


def options(mode: TlsMode, **policy: object) -> ConnectOptions:
    return ConnectOptions("out.test.example", tls=TlsPolicy(mode, **policy))  # type: ignore[arg-type]


def peer(port: int) -> Target:
    return Target(10, PEER_NAME, "127.0.0.1", port)


async def test_optional_tls_accepts_an_untrusted_certificate_unverified(
    tmp_path: Path, tls_keys: str
) -> None:
    with running_node(tmp_path, server=tls_keys) as node:
        conn = await OutboundConnection.open(peer(node.port), options(TlsMode.OPTIONAL))
        assert conn.tls.protocol in ("TLSv1.2", "TLSv1.3") and conn.tls.cipher
        assert not conn.tls.verified and conn.tls.failure is None
        assert not conn.extensions.starttls  # EHLO again after TLS (RFC 3207 §4.2)
        done = await conn.send(ENVELOPE, MESSAGE)
        await conn.close()
        assert done.delivered == ("r@example.org",)
        assert len(list(iter_messages(node.spool))) == 1


async def test_required_tls_not_offered_is_4_7_4(tmp_path: Path) -> None:
    with running_node(tmp_path) as node:  # no certificate: no STARTTLS
        with pytest.raises(DeliveryError) as caught:
            await OutboundConnection.open(peer(node.port), options(TlsMode.REQUIRED))
        # Opportunistic mode goes on in plaintext with the same server.
        conn = await OutboundConnection.open(peer(node.port), options(TlsMode.OPTIONAL))
        assert conn.tls.protocol is None and conn.tls.failure == "starttls-not-supported"
        await conn.close()
    error = caught.value
    assert (error.stage, error.reply.code, error.reply.enhanced) == ("tls", 454, "4.7.4")
    assert error.reply.temporary and not error.reply.remote
    assert "not offered" in error.reply.text


async def test_required_verify_with_the_wrong_name_is_4_7_5(
    tmp_path: Path, tls_keys: str, ca_file: Path
) -> None:
    wrong = options(TlsMode.REQUIRED_VERIFY, verify_name="other.test.example", ca_file=ca_file)
    with running_node(tmp_path, server=tls_keys) as node:
        with pytest.raises(DeliveryError) as caught:
            await OutboundConnection.open(peer(node.port), wrong)
        # The system store does not know the trustme CA: not trusted, also 4.7.5.
        with pytest.raises(DeliveryError) as untrusted:
            await OutboundConnection.open(peer(node.port), options(TlsMode.REQUIRED_VERIFY))
    error = caught.value
    assert (error.stage, error.reply.enhanced) == ("tls", "4.7.5") and error.reply.temporary
    assert "certificate-host-mismatch" in error.reply.text
    assert "certificate-not-trusted" in untrusted.value.reply.text


async def test_required_verify_with_the_right_name_and_ca_is_verified(
    tmp_path: Path, tls_keys: str, ca_file: Path
) -> None:
    right = options(TlsMode.REQUIRED_VERIFY, ca_file=ca_file)  # verifies the target's host
    named = options(TlsMode.REQUIRED_VERIFY, verify_name=PEER_NAME, ca_file=ca_file)
    with running_node(tmp_path, server=tls_keys) as node:
        by_host = await OutboundConnection.open(peer(node.port), right)
        done = await by_host.send(ENVELOPE, MESSAGE)
        await by_host.close()
        # The expected name given explicitly, connecting by an IP literal.
        literal = Target(10, "[127.0.0.1]", "127.0.0.1", node.port)
        by_name = await OutboundConnection.open(literal, named)
        await by_name.close()
    assert done.delivered == ("r@example.org",)
    for conn in (by_host, by_name):
        tls = conn.tls
        assert tls.verified and tls.failure is None and tls.policy.mode is TlsMode.REQUIRED_VERIFY
        assert tls.protocol == "TLSv1.3" and tls.cipher and tls.cipher.startswith("TLS_")


async def test_optional_verify_fails_on_a_bad_certificate_but_not_without_starttls(
    tmp_path: Path, tls_keys: str
) -> None:
    with (
        running_node(tmp_path, server=tls_keys) as node,
        pytest.raises(DeliveryError) as caught,
    ):
        await OutboundConnection.open(peer(node.port), options(TlsMode.OPTIONAL_VERIFY))
    assert caught.value.reply.enhanced == "4.7.5"
    (tmp_path / "plain").mkdir()
    with running_node(tmp_path / "plain") as node:  # no certificate: no STARTTLS
        conn = await OutboundConnection.open(peer(node.port), options(TlsMode.OPTIONAL_VERIFY))
        assert conn.tls.protocol is None and conn.tls.failure == "starttls-not-supported"
        await conn.close()


def auth_server(tmp_path: Path, tls_keys: str) -> str:
    (tmp_path / "policy.py").write_text(textwrap.dedent(AUTH_SCRIPT))
    return tls_keys + 'script = "policy.py"\n'


@pytest.mark.parametrize("mechanisms", [None, ["LOGIN"]], ids=["plain", "login"])
async def test_auth_after_starttls_against_an_auth_hook(
    tmp_path: Path, tls_keys: str, mechanisms: list[str] | None
) -> None:
    server = auth_server(tmp_path, tls_keys)
    if mechanisms:
        server += f"auth_mechanisms = {mechanisms!r}\n".replace("'", '"')
    good = ConnectOptions("out.test.example", auth=("alice", "s3cret"))
    with running_node(tmp_path, server=server) as node:
        conn = await OutboundConnection.open(peer(node.port), good)
        assert conn.tls.protocol is not None
        done = await conn.send(ENVELOPE, MESSAGE)
        await conn.close()
        (stored,) = list(iter_messages(node.spool))
    assert done.delivered == ("r@example.org",)
    mechanism = mechanisms[0] if mechanisms else "PLAIN"  # PLAIN when offered, else LOGIN
    assert stored.auth == {"username": "alice", "mechanism": mechanism}


async def test_refused_credentials_defer_without_showing_the_password(
    tmp_path: Path, tls_keys: str
) -> None:
    bad = ConnectOptions("out.test.example", auth=("alice", "wrong-password"))
    with (
        running_node(tmp_path, server=auth_server(tmp_path, tls_keys)) as node,
        pytest.raises(DeliveryError) as caught,
    ):
        await OutboundConnection.open(peer(node.port), bad)
    error = caught.value
    assert (error.stage, error.reply.code, error.reply.enhanced) == ("auth", 454, "4.7.8")
    assert "535" in error.reply.text  # the server's own reply, for the operator
    assert "wrong-password" not in str(error) and "wrong-password" not in repr(bad)


async def test_a_message_over_the_servers_size_is_refused_before_sending(tmp_path: Path) -> None:
    with running_node(tmp_path, body="[servers.limits]\nmessage_size = 100\n") as node:
        conn = await OutboundConnection.open(peer(node.port), options(TlsMode.NONE))
        assert conn.extensions.size == 100
        with pytest.raises(DeliveryError) as caught:
            await conn.send(ENVELOPE, b"Subject: big\r\n\r\n" + b"x" * 200 + b"\r\n")
        assert conn.usable
        await conn.close()
        assert list(iter_messages(node.spool)) == []
    assert (caught.value.reply.code, caught.value.reply.enhanced) == (552, "5.3.4")
    assert caught.value.permanent and "accepts 100" in caught.value.reply.text
