"""What a finished TLS handshake tells about the connection (RFC 3207, RFC 8314), as scripts
see it."""

from __future__ import annotations

import ssl

from mailwarden.auth.certificates import ClientCertificateVerifier, peer_certificate
from mailwarden.policy.context import TlsInfo
from mailwarden.smtp.server_tls import SNI_ATTRIBUTE


def tls_info(
    ssl_object: ssl.SSLObject | None, verifier: ClientCertificateVerifier | None = None
) -> TlsInfo:
    """Protocol, cipher, key bits, the SNI name and the client certificate (if it sent one),
    verified against ``verifier`` (the listener's ``tls_client_ca``)."""
    if ssl_object is None:
        return TlsInfo(protocol="", cipher="", bits=0)
    cipher = ssl_object.cipher()
    der = ssl_object.getpeercert(binary_form=True)
    certificate = None
    if der:
        # The client's intermediates, where this Python can tell them (3.13 and later);
        # otherwise they must be in tls_client_ca.
        chain_of = getattr(ssl_object, "get_unverified_chain", None)
        chain = [bytes(item) for item in (chain_of() or [])[1:]] if chain_of else []
        certificate = peer_certificate(der, verifier, chain)
    return TlsInfo(
        protocol=ssl_object.version() or "",
        cipher=cipher[0] if cipher else "",
        bits=cipher[2] if cipher else 0,
        peer_certificate_subject=certificate.subject if certificate is not None else None,
        sni=getattr(ssl_object, SNI_ATTRIBUTE, None),
        peer_certificate=certificate,
    )
