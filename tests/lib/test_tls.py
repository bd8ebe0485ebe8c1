"""The script TLS client (``mailwarden.lib.tls``, Halon's TLSSocket) against a trustme TLS echo
server on loopback, with and without a client certificate, over real sockets."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trustme

from mailwarden.lib import TlsError, tls

SERVER_NAME = "echo.test.example"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@asynccontextmanager
async def echo_server(ca: trustme.CA, *, require_client: bool) -> AsyncIterator[tuple[int, list]]:
    """A TLS echo server; yields its port and the client certificates (DER) it was shown."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert(SERVER_NAME).configure_cert(context)
    if require_client:
        context.verify_mode = ssl.CERT_REQUIRED
        ca.configure_trust(context)
    seen: list[bytes | None] = []

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(writer.get_extra_info("ssl_object").getpeercert(binary_form=True))
        try:
            while line := await reader.readline():
                writer.write(b"echo: " + line)
                await writer.drain()
        except (OSError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(session, "127.0.0.1", 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1], seen
    finally:
        server.close()


def ca_file(tmp_path: Path, ca: trustme.CA) -> Path:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


async def test_verified_connection_reads_the_server_certificate(
    tmp_path: Path, ca: trustme.CA
) -> None:
    async with (
        echo_server(ca, require_client=False) as (port, seen),
        await tls.connect(
            "127.0.0.1", port, ca_file=ca_file(tmp_path, ca), sni=SERVER_NAME, timeout=5
        ) as sock,
    ):
        await sock.write(b"hello\n")
        assert await sock.readline() == b"echo: hello\n"
        cert = sock.peer_certificate()
        raw = sock.peer_certificate_dict()
    assert cert is not None and cert.verified and cert.alt_names == (f"DNS:{SERVER_NAME}",)
    assert len(cert.sha256) == 64 and cert.pem.startswith("-----BEGIN CERTIFICATE-----")
    assert ("DNS", SERVER_NAME) in raw["subjectAltName"]
    assert sock.protocol == "TLSv1.3"
    assert seen == [None]  # no client certificate was asked for or sent


async def test_a_client_certificate_is_presented_and_required(
    tmp_path: Path, ca: trustme.CA
) -> None:
    client = ca.issue_cert("script.test.example")
    certificate, key = tmp_path / "client.pem", tmp_path / "client.key"
    client.cert_chain_pems[0].write_to_path(str(certificate))
    client.private_key_pem.write_to_path(str(key))
    async with echo_server(ca, require_client=True) as (port, seen):
        sock = await tls.connect(
            "127.0.0.1",
            port,
            ca_file=ca_file(tmp_path, ca),
            sni=SERVER_NAME,
            certificate=certificate,
            key=key,
            timeout=5,
        )
        await sock.write(b"with\n")
        answer = await sock.readline()
        await sock.close()
        # Without one the server ends the session in the handshake (TLS 1.3 reports it to the
        # client only at its first read): nothing is echoed, the connection is closed.
        bare = await tls.connect("127.0.0.1", port, verify=False, timeout=5)
        try:
            await bare.write(b"without\n")
            refused = await bare.readline()
        except TlsError as error:  # TLS 1.2 peers, or the alert read as an error
            refused = error.reason.encode()
        await bare.close()
    assert answer == b"echo: with\n"
    assert seen == [ssl.PEM_cert_to_DER_cert(client.cert_chain_pems[0].bytes().decode())]
    assert not refused.startswith(b"echo")


async def test_untrusted_certificate_and_unreadable_files_are_tls_errors(
    tmp_path: Path, ca: trustme.CA
) -> None:
    async with echo_server(ca, require_client=False) as (port, _):
        with pytest.raises(TlsError) as untrusted:
            await tls.connect("127.0.0.1", port, sni=SERVER_NAME, timeout=5)  # system store
        sock = await tls.connect("127.0.0.1", port, verify=False, timeout=5)
        cert = sock.peer_certificate()
        await sock.close()
    with pytest.raises(TlsError) as missing:
        await tls.connect("127.0.0.1", port, certificate=tmp_path / "no.pem", timeout=5)
    assert untrusted.value.temporary and "not verified" in untrusted.value.reason
    assert cert is not None and not cert.verified and cert.verify_error
    assert not missing.value.temporary
