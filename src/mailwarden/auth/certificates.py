"""X.509 client certificates: what a script sees of one, and checking it against a CA bundle.

The TLS layer only asks for the certificate and hands it over unverified (see
:mod:`mailwarden.smtp.openssl_accept`): verifying it here, rather than inside the handshake,
lets a listener with ``tls_client_certificate = "request"`` pass an unverified certificate on to
the script together with the reason it failed, which OpenSSL's own check cannot (it aborts the
handshake instead). The chain, the validity dates and the key usage are checked (RFC 5280 §6,
§4.2.1.3, §4.2.1.12). Imports nothing from ``policy/``.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Short names of the subject and issuer attributes scripts ask for most (RFC 4514 §3).
_ATTRIBUTE_NAMES = {
    NameOID.COMMON_NAME: "CN",
    NameOID.ORGANIZATION_NAME: "O",
    NameOID.ORGANIZATIONAL_UNIT_NAME: "OU",
    NameOID.COUNTRY_NAME: "C",
    NameOID.STATE_OR_PROVINCE_NAME: "ST",
    NameOID.LOCALITY_NAME: "L",
    NameOID.EMAIL_ADDRESS: "emailAddress",
    NameOID.SERIAL_NUMBER: "serialNumber",
    NameOID.DOMAIN_COMPONENT: "DC",
    NameOID.USER_ID: "UID",
}


def name_parts(name: x509.Name) -> dict[str, tuple[str, ...]]:
    """A distinguished name as ``{"CN": ("client.example",), "O": (...), ...}``: every value
    of each attribute, in certificate order (an attribute may repeat, OU often does)."""
    parts: dict[str, list[str]] = {}
    for attribute in name:
        key = _ATTRIBUTE_NAMES.get(attribute.oid, attribute.oid.dotted_string)
        value = attribute.value
        parts.setdefault(key, []).append(value if isinstance(value, str) else value.hex())
    return {key: tuple(values) for key, values in parts.items()}


def _alt_names(certificate: x509.Certificate) -> tuple[str, ...]:
    """The subjectAltName entries as ``DNS:…``, ``email:…``, ``IP:…``, ``URI:…``."""
    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return ()
    prefixes = {
        x509.DNSName: "DNS",
        x509.RFC822Name: "email",
        x509.IPAddress: "IP",
        x509.UniformResourceIdentifier: "URI",
    }
    names = []
    for entry in extension.value:
        prefix = prefixes.get(type(entry))
        if prefix is not None:
            names.append(f"{prefix}:{entry.value}")
    return tuple(names)


@dataclass(frozen=True, slots=True)
class PeerCertificate:
    """The certificate a client presented in the TLS handshake, as scripts see it.

    ``verified`` is True only when it chains to the listener's ``tls_client_ca``, is within its
    validity dates and may be used for client authentication; otherwise ``verify_error`` says
    why not (``"certificate has expired"``, ``"no trusted issuer found"``, ...).
    """

    subject: str  # RFC 4514 string, e.g. "CN=client.example,O=Example"
    subject_parts: dict[str, tuple[str, ...]]
    issuer: str
    issuer_parts: dict[str, tuple[str, ...]]
    serial: str  # hexadecimal, upper case, as ``openssl x509 -serial`` prints it
    alt_names: tuple[str, ...]
    not_before: datetime.datetime
    not_after: datetime.datetime
    sha1: str  # fingerprints of the DER encoding, lower-case hexadecimal
    sha256: str
    pem: str
    verified: bool
    verify_error: str | None = None
    der: bytes = field(default=b"", repr=False)

    @property
    def common_name(self) -> str | None:
        """The subject's (first) CN, or None."""
        names = self.subject_parts.get("CN")
        return names[0] if names else None


class ClientCertificateVerifier:
    """Checks client certificates against one PEM bundle of trust anchors.

    Raises ValueError when the bundle holds no certificate, OSError when it cannot be read.
    """

    def __init__(self, ca_file: Path | str) -> None:
        data = Path(ca_file).read_bytes()
        try:
            anchors = x509.load_pem_x509_certificates(data)
        except ValueError:
            raise ValueError(f"{ca_file}: expected PEM certificates") from None
        self._store = verification.Store(anchors)

    def problem(
        self,
        certificate: x509.Certificate,
        intermediates: Sequence[x509.Certificate] = (),
        now: datetime.datetime | None = None,
    ) -> str | None:
        """Why ``certificate`` is not a valid client certificate, or None when it is."""
        now = now or datetime.datetime.now(datetime.UTC)
        # The dates first: the reason a user understands at once (RFC 5280 §4.1.2.5).
        if now > certificate.not_valid_after_utc:
            return "certificate has expired"
        if now < certificate.not_valid_before_utc:
            return "certificate is not yet valid"
        usage = _usage_problem(certificate)
        if usage is not None:
            return usage
        builder = (
            verification.PolicyBuilder()
            .store(self._store)
            .time(now)
            # The chain's CAs are held to the Web PKI's rules (basic constraints, key usage);
            # the client's own certificate only to the checks above: SMTP client certificates
            # are often made by hand, and the Web PKI's rules for server names do not apply.
            .extension_policies(
                ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(),
                ee_policy=verification.ExtensionPolicy.permit_all(),
            )
        )
        try:
            builder.build_client_verifier().verify(certificate, list(intermediates))
        except verification.VerificationError as error:
            text = str(error)
            if "candidates exhausted" in text:
                return "no trusted issuer found"
            return text.split(" (encountered processing", 1)[0]
        return None


def _usage_problem(certificate: x509.Certificate) -> str | None:
    """Key usage (RFC 5280 §4.2.1.3) and extended key usage (§4.2.1.12) that forbid TLS
    client authentication, when the certificate has those extensions at all."""
    extensions = certificate.extensions
    try:
        usage = extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        pass
    else:
        if not (usage.digital_signature or usage.key_agreement):
            return "key usage does not allow TLS client authentication"
    try:
        purposes = extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return None
    if ExtendedKeyUsageOID.CLIENT_AUTH not in purposes and (
        ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in purposes
    ):
        return "extended key usage does not include TLS client authentication"
    return None


def peer_certificate(
    der: bytes,
    verifier: ClientCertificateVerifier | None,
    intermediates: Sequence[bytes] = (),
    now: datetime.datetime | None = None,
) -> PeerCertificate:
    """What a script sees of the DER certificate a client sent; verified with ``verifier``
    (None: the listener has no ``tls_client_ca``, so nothing can be verified).

    Raises ValueError when ``der`` is not a certificate (the TLS library gave it to us, so
    that would be a bug there)."""
    certificate = x509.load_der_x509_certificate(der)
    if verifier is None:
        problem: str | None = "no tls_client_ca configured"
    else:
        chain = [x509.load_der_x509_certificate(item) for item in intermediates]
        problem = verifier.problem(certificate, chain, now)
    return PeerCertificate(
        subject=certificate.subject.rfc4514_string(),
        subject_parts=name_parts(certificate.subject),
        issuer=certificate.issuer.rfc4514_string(),
        issuer_parts=name_parts(certificate.issuer),
        serial=f"{certificate.serial_number:X}",
        alt_names=_alt_names(certificate),
        not_before=certificate.not_valid_before_utc,
        not_after=certificate.not_valid_after_utc,
        sha1=hashlib.sha1(der).hexdigest(),  # a fingerprint, not a signature
        sha256=hashlib.sha256(der).hexdigest(),
        pem=certificate.public_bytes(Encoding.PEM).decode("ascii"),
        verified=problem is None,
        verify_error=problem,
        der=der,
    )
