"""A listener's TLS: its certificates chosen by SNI, versions, ciphers and client certificates.

Built from a ``[[servers]]`` entry when the listener starts or reloads, and frozen into the
listener's snapshot, so a reload serves new certificates to new connections while open ones keep
theirs. One :class:`ssl.SSLContext` per certificate: the first is the one a handshake starts
with (it decides versions, ciphers and whether a client certificate is asked for, which OpenSSL
takes from the first context only), and its SNI callback switches to the certificate whose names
match the name the client asked for (RFC 6066 §3), or keeps the first.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography import x509

from mailwarden.auth.certificates import ClientCertificateVerifier
from mailwarden.smtp.openssl_accept import UnsupportedError, accept_any_client_certificate
from mailwarden.smtp.tls_tickets import share_ticket_keys

if TYPE_CHECKING:
    from mailwarden.config.models import ServerSettings, TlsCertificate

SniCallback = Callable[[ssl.SSLObject, str | None, ssl.SSLContext], None]

# Where the SNI callback leaves the name the client asked for, on the handshake's SSLObject
# (server-side objects have no server_hostname of their own).
SNI_ATTRIBUTE = "_mailwarden_sni"

_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


class TlsSetupError(ValueError):
    """A listener's TLS cannot be set up. ``key`` is the key path inside the ``[[servers]]``
    entry (``("tls_certificates", 1, "certificate")``), ``problem`` says what is wrong with
    which file; the message is ``servers[ID].KEY: PROBLEM``."""

    def __init__(self, server_id: str, key: tuple[str | int, ...], problem: str) -> None:
        self.key = key
        self.problem = problem
        dotted = ".".join(str(part) for part in key)
        super().__init__(f"servers[{server_id}].{dotted}: {problem}")


def certificate_names(path: str) -> tuple[str, ...]:
    """The DNS names of a PEM certificate's subjectAltName, else its CN (lower case)."""
    with open(path, "rb") as file:
        certificate = x509.load_pem_x509_certificate(file.read())
    try:
        alt = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        names = [
            str(attribute.value)
            for attribute in certificate.subject.get_attributes_for_oid(
                x509.oid.NameOID.COMMON_NAME
            )
        ]
    else:
        names = alt.value.get_values_for_type(x509.DNSName)
    return tuple(name.lower().rstrip(".") for name in names)


def name_matches(pattern: str, name: str) -> bool:
    """``name`` is ``pattern``, or ``pattern`` is ``*.`` plus the parent of ``name``: a
    wildcard stands for exactly one left-most label (RFC 6125 §6.4.3)."""
    if pattern == name:
        return True
    if pattern.startswith("*."):
        label, dot, parent = name.partition(".")
        return bool(label) and bool(dot) and parent == pattern[2:]
    return False


@dataclass(frozen=True, slots=True)
class ServerTls:
    """What a session needs for a handshake: the context to start it with, and what to check
    after it (the client certificate mode and the verifier of ``tls_client_ca``)."""

    context: ssl.SSLContext
    client_certificate: str  # "off", "request" or "require"
    verifier: ClientCertificateVerifier | None


def _context(settings: ServerSettings, pair: TlsCertificate) -> ssl.SSLContext:
    """One certificate's context; raises ssl.SSLError, OSError, or TlsSetupError."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _VERSIONS[settings.tls_min_version]
    if settings.tls_ciphers is not None:
        # TLS 1.2 and older only: OpenSSL configures TLS 1.3 suites separately.
        context.set_ciphers(settings.tls_ciphers)
    context.load_cert_chain(pair.certificate, pair.key)
    # Tickets any worker can resume, before and after a reload (see tls_tickets). Where it
    # cannot be done each worker resumes its own: slower, never wrong.
    share_ticket_keys(context)
    if settings.tls_client_certificate == "off":
        # Not asked for: opportunistic STARTTLS must not become a refusal (RFC 3207 §4.1).
        context.verify_mode = ssl.CERT_NONE
    else:
        try:
            accept_any_client_certificate(
                context, required=settings.tls_client_certificate == "require"
            )
        except UnsupportedError as error:
            raise TlsSetupError(settings.id, ("tls_client_certificate",), str(error)) from None
    return context


def build_server_tls(settings: ServerSettings) -> ServerTls | None:
    """The listener's TLS, or None when it has no certificate.

    Raises TlsSetupError naming the key and file: an unreadable or mismatched certificate and
    key, a cipher list OpenSSL does not know, an unusable ``tls_client_ca``."""
    pairs = settings.certificates
    if not pairs:
        return None
    contexts: list[tuple[tuple[str, ...], ssl.SSLContext]] = []
    if settings.tls_ciphers is not None:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(settings.tls_ciphers)
        except ssl.SSLError:
            raise TlsSetupError(
                settings.id,
                ("tls_ciphers",),
                f"expected an OpenSSL cipher list, got {settings.tls_ciphers!r}",
            ) from None
    for pair in pairs:
        try:
            context = _context(settings, pair)
            names = pair.names
            if names is None:
                names = certificate_names(str(pair.certificate))
        except (OSError, ValueError) as error:  # ssl.SSLError is an OSError
            if isinstance(error, TlsSetupError):
                raise
            key = "tls_key" if pair.where == ("tls_certificate",) else "key"
            raise TlsSetupError(
                settings.id,
                pair.where,
                f"cannot use {pair.certificate} with {key} {pair.key}: "
                f"{getattr(error, 'strerror', None) or error}",
            ) from None
        contexts.append((names, context))
    verifier = None
    if settings.tls_client_ca is not None:
        try:
            verifier = ClientCertificateVerifier(settings.tls_client_ca)
        except (OSError, ValueError) as error:
            raise TlsSetupError(
                settings.id,
                ("tls_client_ca",),
                f"cannot use {settings.tls_client_ca}: {getattr(error, 'strerror', None) or error}",
            ) from None
    first = contexts[0][1]
    first.sni_callback = _sni_chooser(contexts)
    return ServerTls(first, settings.tls_client_certificate, verifier)


def _sni_chooser(contexts: list[tuple[tuple[str, ...], ssl.SSLContext]]) -> SniCallback:
    exact: dict[str, ssl.SSLContext] = {}
    wildcards: list[tuple[str, ssl.SSLContext]] = []
    for names, context in contexts:
        for name in names:
            if name.startswith("*."):
                wildcards.append((name, context))
            else:
                exact.setdefault(name, context)

    def choose(ssl_object: ssl.SSLObject, server_name: str | None, first: ssl.SSLContext) -> None:
        """OpenSSL's servername callback (called for every handshake, with None when the client
        sent no name): note the name for ``conn.tls.sni``, serve the certificate for it."""
        if not server_name:
            return None
        name = server_name.lower().rstrip(".")
        setattr(ssl_object, SNI_ATTRIBUTE, name)
        chosen = exact.get(name)
        if chosen is None:
            chosen = next((c for p, c in wildcards if name_matches(p, name)), None)
        if chosen is not None and chosen is not first:
            ssl_object.context = chosen
        return None

    return choose
