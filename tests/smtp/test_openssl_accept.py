"""smtp/openssl_accept.py: asking for a client certificate without letting OpenSSL refuse it,
under both event loops the node may run on, and failing closed where that cannot be done.

Real TLS handshakes over loopback sockets; the certificates come from trustme CAs.
"""

from __future__ import annotations

import asyncio
import ssl
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from mailwarden.config.models import ServerSettings
from mailwarden.smtp.server_tls import TlsSetupError, build_server_tls

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA(organization_name="Trusted Clients CA")


@pytest.fixture(scope="module")
def stranger() -> trustme.CA:
    return trustme.CA(organization_name="Stranger CA")


def settings(directory: Path, ca: trustme.CA, mode: str) -> ServerSettings:
    server = ca.issue_cert("mx.test.example")
    server.cert_chain_pems[0].write_to_path(str(directory / "server.pem"))
    server.private_key_pem.write_to_path(str(directory / "server.key"))
    ca.cert_pem.write_to_path(str(directory / "clients-ca.pem"))
    return ServerSettings(
        id="tls",
        listen=["127.0.0.1:0"],
        tls_certificate=directory / "server.pem",
        tls_key=directory / "server.key",
        tls_client_certificate=mode,  # type: ignore[arg-type]
        tls_client_ca=directory / "clients-ca.pem",
    )


def handshake(
    loop_name: str,
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
) -> list[bytes | None]:
    """One TLS connection on ``loop_name``'s loop. The certificates the server saw in the
    connections it completed: ``[DER]``, ``[None]`` for a client that sent none, ``[]`` when
    the handshake failed (the client then reads nothing, or its read raises)."""
    seen: list[bytes | None] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(writer.get_extra_info("ssl_object").getpeercert(binary_form=True))
        writer.write(b"hello\r\n")
        await writer.drain()
        writer.close()

    async def run() -> None:
        server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_context)
        port = server.sockets[0].getsockname()[1]
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client_context, server_hostname="mx.test.example"
            )
            # TLS 1.3: the server judges the client's certificate after the client is done
            # with its handshake; its verdict (the greeting or an alert) comes with this read.
            try:
                line = await asyncio.wait_for(reader.readline(), 10)
            except (ssl.SSLError, ConnectionError):
                line = b""
            assert line == (b"hello\r\n" if seen else b"")
            writer.close()
        finally:
            server.close()

    loop = LOOPS[loop_name]()
    try:
        loop.run_until_complete(run())
    finally:
        loop.close()
    return seen


def client(ca: trustme.CA, certificate: trustme.LeafCert | None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    if certificate is not None:
        certificate.configure_cert(context)
    return context


def der_of(certificate: trustme.LeafCert) -> bytes:
    pem = certificate.cert_chain_pems[0].bytes()
    return x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_request_lets_a_certificate_no_trusted_ca_signed_through(
    tmp_path: Path, ca: trustme.CA, stranger: trustme.CA, loop_name: str
) -> None:
    tls = build_server_tls(settings(tmp_path, ca, "request"))
    assert tls is not None
    presented = stranger.issue_cert("other.example")
    # The certificate reaches the session, which verifies it itself (auth/certificates.py).
    assert handshake(loop_name, tls.context, client(ca, presented)) == [der_of(presented)]


def test_the_stdlib_alone_aborts_the_handshake_for_that_certificate(
    tmp_path: Path, ca: trustme.CA, stranger: trustme.CA
) -> None:
    """Why openssl_accept exists: CERT_OPTIONAL, the stdlib's only way to ask for a certificate,
    refuses one that does not verify, so "request" could never show it to the script."""
    settings(tmp_path, ca, "request")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "server.pem", tmp_path / "server.key")
    context.load_verify_locations(tmp_path / "clients-ca.pem")
    context.verify_mode = ssl.CERT_OPTIONAL
    assert handshake("asyncio", context, client(ca, stranger.issue_cert("other.example"))) == []


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_require_fails_the_handshake_of_a_client_without_certificate(
    tmp_path: Path, ca: trustme.CA, loop_name: str
) -> None:
    tls = build_server_tls(settings(tmp_path, ca, "require"))
    assert tls is not None
    assert handshake(loop_name, tls.context, client(ca, None)) == []


@pytest.mark.parametrize("mode", ["request", "require"])
def test_where_it_cannot_be_done_the_listener_does_not_start(
    tmp_path: Path, ca: trustme.CA, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fail closed: no context that would ask without the accept-all callback (which, under
    "require", would have OpenSSL refuse everyone) or with a guessed one; a setup error that
    names the key instead. Another Python implementation is the case that can be made here."""
    listener = settings(tmp_path, ca, mode)
    monkeypatch.setattr(sys.implementation, "name", "notcpython")
    with pytest.raises(TlsSetupError) as raised:
        build_server_tls(listener)
    assert raised.value.key == ("tls_client_certificate",)
    assert str(raised.value) == (
        "servers[tls].tls_client_certificate: "
        "requesting unverified client certificates needs CPython"
    )
