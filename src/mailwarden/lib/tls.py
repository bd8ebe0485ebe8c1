"""A TLS client for scripts (Halon's TLSSocket): a thin layer over asyncio's TLS streams.

``sock = await tls.connect("ldap.example", 636, ca_file="ca.pem")`` opens a TLS connection,
optionally presenting a client certificate; ``await sock.write(b"...")``, ``await
sock.read()``, ``await sock.readline()``, ``await sock.close()`` (or ``async with``).
``sock.peer_certificate()`` is the server's certificate as the same
:class:`~mailwarden.auth.certificates.PeerCertificate` model ``conn.tls.peer_certificate``
is; ``sock.peer_certificate_dict()`` is the stdlib's ``getpeercert()`` dict (empty when the
certificate was not verified, as the stdlib gives it).

Every failure (no connection, handshake or verification failed, timeout, connection lost, a
file that cannot be read) is one :class:`TlsError` with ``temporary`` saying whether a later
try may succeed: a script answers ``Defer`` (4xx) then. Nothing here logs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
from collections.abc import Awaitable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from mailwarden.auth.certificates import PeerCertificate, peer_certificate
from mailwarden.delivery.tls import MIN_VERSIONS

__all__ = ["TlsError", "TlsSocket", "connect"]

DEFAULT_TIMEOUT = 30.0
_T = TypeVar("_T")


class TlsError(Exception):
    """A TLS connection that could not be opened or used. ``temporary``: False only for a
    problem of the call itself (a file that cannot be read, a bad argument)."""

    def __init__(self, host: str, port: int, reason: str, *, temporary: bool = True) -> None:
        super().__init__(f"TLS {host}:{port}: {reason}")
        self.host = host
        self.port = port
        self.reason = reason
        self.temporary = temporary


def _context(
    *,
    verify: bool,
    ca_file: str | Path | None,
    certificate: str | Path | None,
    key: str | Path | None,
    min_version: str,
) -> ssl.SSLContext:
    if verify:
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.minimum_version = MIN_VERSIONS[min_version]
    if certificate is not None:
        context.load_cert_chain(str(certificate), str(key) if key is not None else None)
    return context


class TlsSocket:
    """One open TLS connection; every method raises :class:`TlsError` on failure."""

    def __init__(
        self,
        host: str,
        port: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        timeout: float,
        verified: bool,
    ) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.verified = verified  # the certificate chained to the CA and matched the name
        self._reader = reader
        self._writer = writer
        ssl_object = writer.get_extra_info("ssl_object")
        self.protocol: str | None = ssl_object.version()
        cipher = ssl_object.cipher()
        self.cipher: str | None = cipher[0] if cipher else None
        self._ssl = ssl_object

    async def __aenter__(self) -> TlsSocket:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    def peer_certificate(self) -> PeerCertificate | None:
        """The server's certificate (None if it sent none), ``verified`` as :attr:`verified`."""
        der = self._ssl.getpeercert(binary_form=True)
        if not der:
            return None
        certificate = peer_certificate(der, None)
        error = None if self.verified else "not verified (verify=False)"
        return dataclasses.replace(certificate, verified=self.verified, verify_error=error)

    def peer_certificate_dict(self) -> dict[str, Any]:
        """The stdlib's ``getpeercert()``; empty when the certificate was not verified."""
        return dict(self._ssl.getpeercert() or {})

    async def write(self, data: bytes) -> None:
        self._writer.write(data)
        await self._wait(self._writer.drain())

    async def read(self, limit: int = 65536) -> bytes:
        """Up to ``limit`` bytes; b"" when the server closed the connection."""
        return await self._wait(self._reader.read(limit))

    async def readline(self) -> bytes:
        """One line, with its end; b"" at the end of the connection."""
        return await self._wait(self._reader.readline())

    async def close(self) -> None:
        """Close; never raises."""
        self._writer.close()
        try:
            async with asyncio.timeout(2.0):
                await self._writer.wait_closed()
        except (OSError, ssl.SSLError, TimeoutError):
            pass

    async def _wait(self, awaitable: Awaitable[_T]) -> _T:
        try:
            async with asyncio.timeout(self.timeout):
                return await awaitable
        except TimeoutError:
            raise TlsError(self.host, self.port, f"no answer in {self.timeout:g}s") from None
        except (OSError, ssl.SSLError, ValueError) as error:
            raise TlsError(self.host, self.port, str(error) or type(error).__name__) from None


async def connect(
    host: str,
    port: int,
    *,
    ca_file: str | Path | None = None,
    verify: bool = True,
    certificate: str | Path | None = None,
    key: str | Path | None = None,
    sni: str | None = None,
    min_version: str = "TLSv1.2",
    timeout: float = DEFAULT_TIMEOUT,
) -> TlsSocket:
    """Open a TLS connection to ``host:port`` (TLS from the first byte).

    ``verify``: the certificate must chain to ``ca_file`` (a PEM bundle; None: the system
    store) and match ``sni`` or, without one, ``host``. ``certificate``/``key``: PEM files of
    a client certificate presented when the server asks. ``sni``: the server name sent
    (default ``host`` unless it is an IP address). ``timeout``: seconds for the connection and
    the handshake, and for each later read or write.

    Raises TlsError: temporary for no connection, a timeout, a failed handshake or a
    certificate that does not verify; not temporary for files that cannot be read."""
    if min_version not in MIN_VERSIONS:
        raise TlsError(host, port, f"min_version {min_version!r}", temporary=False)
    try:
        context = _context(
            verify=verify,
            ca_file=ca_file,
            certificate=certificate,
            key=key,
            min_version=min_version,
        )
    except (OSError, ssl.SSLError) as error:
        raise TlsError(host, port, f"certificate files: {error}", temporary=False) from None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=context, server_hostname=sni or host
            )
    except TimeoutError:
        raise TlsError(host, port, f"no connection within {timeout:g}s") from None
    except ssl.SSLCertVerificationError as error:
        reason = f"certificate not verified: {error.verify_message or error}"
        raise TlsError(host, port, reason) from None
    except (OSError, ssl.SSLError) as error:
        raise TlsError(host, port, error.strerror or str(error)) from None
    return TlsSocket(host, port, reader, writer, timeout, verified=verify)
