"""Outbound TLS client settings (issue 8, sending side): a client certificate presented to a
``mailwarden run`` listener with ``tls_client_certificate = "require"``, the SNI sent (seen by
the listener's certificate selection), the minimum protocol version against a TLS 1.2-only
peer, the server's certificate in the outcome, and config errors naming the key. Real sockets,
trustme certificates."""

from __future__ import annotations

import asyncio
import ssl
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trustme
from tests.support.node import running_node
from tests.support.tls_peers import facts_script, recorded

from mailwarden.config import ConfigError, load_config
from mailwarden.delivery.connection import ConnectOptions, OutboundConnection
from mailwarden.delivery.errors import DeliveryError
from mailwarden.delivery.mx import Target
from mailwarden.delivery.tls import TlsMode, TlsPolicy
from mailwarden.smtp.client import Envelope

PEER_NAME = "mx.test.example"
MESSAGE = b"Subject: client cert\r\n\r\nhello\r\n"
ENVELOPE = Envelope("s@example.com", ["r@example.org"])


def write_pair(directory: Path, cert: trustme.LeafCert, stem: str) -> tuple[Path, Path]:
    certificate, key = directory / f"{stem}.pem", directory / f"{stem}.key"
    cert.cert_chain_pems[0].write_to_path(str(certificate))
    cert.private_key_pem.write_to_path(str(key))
    return certificate, key


def listener(directory: Path, ca: trustme.CA, extra: str = "") -> str:
    """A listener with a certificate for PEER_NAME that requires a client certificate of ca."""
    write_pair(directory, ca.issue_cert(PEER_NAME, "127.0.0.1"), "server")
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    return (
        'tls_certificate = "server.pem"\ntls_key = "server.key"\n'
        'tls_client_certificate = "require"\ntls_client_ca = "ca.pem"\n'
        + facts_script(directory)
        + extra
    )


def options(**policy: object) -> ConnectOptions:
    return ConnectOptions("out.test.example", tls=TlsPolicy(**policy))  # type: ignore[arg-type]


async def test_a_route_presents_its_client_certificate_to_a_require_listener(
    tmp_path: Path, ca: trustme.CA
) -> None:
    certificate, key = write_pair(tmp_path, ca.issue_cert("out.test.example"), "client")
    policy = {
        "mode": TlsMode.REQUIRED_VERIFY,
        "ca_file": tmp_path / "ca.pem",
        "client_certificate": certificate,
        "client_key": key,
    }
    with running_node(tmp_path, server=listener(tmp_path, ca)) as node:
        target = Target(10, PEER_NAME, "127.0.0.1", node.port)
        conn = await OutboundConnection.open(target, options(**policy))
        done = await conn.send(ENVELOPE, MESSAGE)
        await conn.close()
    assert done.delivered == ("r@example.org",)
    seen = [fact["tls"]["cert"] for fact in recorded(tmp_path) if fact["hook"] == "mail_from"]
    assert seen and seen[0]["verified"] and seen[0]["alt_names"] == ["DNS:out.test.example"]
    # The outcome carries the listener's certificate, verified.
    peer = conn.tls.peer_certificate
    assert peer is not None and peer.verified and "DNS:" + PEER_NAME in peer.alt_names


async def test_without_a_client_certificate_the_require_listener_defers(
    tmp_path: Path, ca: trustme.CA
) -> None:
    policy = {"mode": TlsMode.REQUIRED_VERIFY, "ca_file": tmp_path / "ca.pem"}
    with running_node(tmp_path, server=listener(tmp_path, ca)) as node:
        target = Target(10, PEER_NAME, "127.0.0.1", node.port)
        with pytest.raises(DeliveryError) as caught:
            conn = await OutboundConnection.open(target, options(**policy))
            await conn.send(ENVELOPE, MESSAGE)
    assert caught.value.reply.temporary  # deferred, not bounced
    assert not [fact for fact in recorded(tmp_path) if fact["hook"] == "mail_from"]


async def test_tls_sni_selects_the_listeners_certificate_and_the_name_is_still_verified(
    tmp_path: Path, ca: trustme.CA
) -> None:
    write_pair(tmp_path, ca.issue_cert("sni.test.example"), "sni")
    extra = (
        '[[servers.tls_certificates]]\ncertificate = "sni.pem"\nkey = "sni.key"\n'
        'names = ["sni.test.example"]\n'
    )
    server = listener(tmp_path, ca).replace('tls_client_certificate = "require"', "")
    with running_node(tmp_path, server=server + extra) as node:
        target = Target(10, PEER_NAME, "127.0.0.1", node.port)
        # SNI alone, not verifying: the listener serves the certificate of the SNI name.
        plain = await OutboundConnection.open(
            target, options(mode=TlsMode.REQUIRED, sni="sni.test.example")
        )
        await plain.close()
        verifying = {"mode": TlsMode.REQUIRED_VERIFY, "ca_file": tmp_path / "ca.pem"}
        # SNI and the name verified differ: the SNI's certificate is not PEER_NAME's.
        with pytest.raises(DeliveryError) as caught:
            await OutboundConnection.open(target, options(**verifying, sni="sni.test.example"))
        named = await OutboundConnection.open(
            target, options(**verifying, sni="sni.test.example", verify_name="sni.test.example")
        )
        await named.close()
    assert plain.tls.peer_certificate is not None
    assert plain.tls.peer_certificate.alt_names == ("DNS:sni.test.example",)
    assert not plain.tls.peer_certificate.verified
    assert "certificate-host-mismatch" in caught.value.reply.text
    assert caught.value.reply.enhanced == "4.7.5"
    assert named.tls.verified and named.tls.peer_certificate is not None
    # The listener saw the SNI (its EHLO after STARTTLS, RFC 3207 §4.2).
    after_tls = [f["tls"] for f in recorded(tmp_path) if f["hook"] == "helo" and f["tls"]]
    assert after_tls and all(tls["sni"] == "sni.test.example" for tls in after_tls)


@asynccontextmanager
async def tls12_only_peer(ca: trustme.CA) -> AsyncIterator[int]:
    """A minimal STARTTLS peer whose TLS stops at 1.2 (as an old MTA's would)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    ca.issue_cert(PEER_NAME).configure_cert(context)

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 old.example ESMTP\r\n")
        try:
            while line := await reader.readline():
                verb = line[:4].upper()
                if verb == b"EHLO":
                    writer.write(b"250-old.example\r\n250 STARTTLS\r\n")
                elif verb == b"STAR":
                    writer.write(b"220 go ahead\r\n")
                    await writer.drain()
                    await writer.start_tls(context)
                elif verb == b"QUIT":
                    writer.write(b"221 bye\r\n")
                    break
                else:
                    writer.write(b"250 ok\r\n")
                await writer.drain()
        except (OSError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(session, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def test_min_version_tls13_refuses_a_tls12_only_peer(ca: trustme.CA) -> None:
    async with tls12_only_peer(ca) as port:
        target = Target(10, PEER_NAME, "127.0.0.1", port)
        with pytest.raises(DeliveryError) as caught:
            await OutboundConnection.open(
                target, options(mode=TlsMode.REQUIRED, min_version="TLSv1.3")
            )
        old = await OutboundConnection.open(target, options(mode=TlsMode.REQUIRED))
        await old.close()
    assert (caught.value.stage, caught.value.reply.enhanced) == ("tls", "4.7.5")
    assert old.tls.protocol == "TLSv1.2"


def test_config_errors_name_the_client_certificate_keys(tmp_path: Path, ca: trustme.CA) -> None:
    write_pair(tmp_path, ca.issue_cert("a.example"), "a")
    write_pair(tmp_path, ca.issue_cert("b.example"), "b")
    path = tmp_path / "mailwarden.toml"
    path.write_text(
        textwrap.dedent(
            """
            [delivery]
            tls_client_certificate = "a.pem"
            tls_client_key = "b.key"
            tls_min_version = "TLSv1.3"

            [[routes]]
            domains = ["x.example"]
            tls_client_certificate = "missing.pem"
            tls_client_key = "a.key"
            tls_sni = "smarthost.example"
            """
        )
    )
    config = load_config(path)
    assert config.delivery.tls_policy().min_version == "TLSv1.3"
    route = config.routes[0].tls_policy(config.delivery)
    assert route.sni == "smarthost.example" and route.min_version == "TLSv1.3"
    with pytest.raises(ConfigError) as caught:
        config.check_files()
    text = "\n".join(caught.value.problems)
    assert "delivery.tls_client_key: expected the key of a.pem" in text
    assert "does not match" in text
    assert "routes[0].tls_client_certificate: expected a readable PEM file" in text
    lone = tmp_path / "lone.toml"
    lone.write_text('[delivery]\ntls_client_certificate = "a.pem"\n')
    with pytest.raises(ConfigError) as alone:
        load_config(lone)
    assert "tls_client_certificate" in str(alone.value) and "tls_client_key" in str(alone.value)
