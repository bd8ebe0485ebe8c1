"""What a finished TLS handshake tells about the connection (RFC 3207), as scripts see it."""

from __future__ import annotations

import ssl

from mailwarden.policy.context import TlsInfo


def tls_info(ssl_object: ssl.SSLObject | None) -> TlsInfo:
    """Protocol, cipher, key bits and the client certificate's subject (if it sent one)."""
    if ssl_object is None:
        return TlsInfo(protocol="", cipher="", bits=0)
    cipher = ssl_object.cipher()
    peer_cert = ssl_object.getpeercert()
    subject = None
    if peer_cert:
        subject = ", ".join("=".join(item) for rdn in peer_cert.get("subject", ()) for item in rdn)
    return TlsInfo(
        protocol=ssl_object.version() or "",
        cipher=cipher[0] if cipher else "",
        bits=cipher[2] if cipher else 0,
        peer_certificate_subject=subject,
    )
