"""The outbound TLS policy of a route or destination.

One object says what an attempt requires of TLS, so that MTA-STS (RFC 8461) and DANE
(RFC 7672) can later set the same fields (``source`` says which policy applied) without a
second code path. :func:`client_context` builds the SSL context a policy asks for.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path


class TlsMode(enum.StrEnum):
    NONE = "none"  # never STARTTLS
    OPTIONAL = "optional"  # opportunistic (RFC 3207): STARTTLS when offered, unverified; a failed
    # handshake is retried in plaintext (as opportunistic TLS must, RFC 7435 §3)
    OPTIONAL_VERIFY = "optional_verify"  # STARTTLS when offered, and then the certificate must
    # verify; plaintext only when STARTTLS is not offered
    REQUIRED = "required"  # STARTTLS must succeed (any certificate); else temporary failure
    REQUIRED_VERIFY = "required_verify"  # STARTTLS must succeed with a verified certificate


@dataclass(frozen=True, slots=True)
class TlsPolicy:
    """What an attempt requires of TLS.

    ``verify_name``: the name the certificate must match; None means the host connected to
    (the MX name, or the route's host). ``ca_file``: PEM bundle; None means the system store.
    ``source``: which policy decided (``config``, ``route``, ``script``, ``mta-sts``,
    ``dane``), reported to post_delivery and in TLS reports.

    The ``policy_*`` fields are the RFC 8460 §4.4 "policy" object of the TLS report the
    session counts in: ``policy_type`` ``sts``, ``tlsa`` or ``no-policy-found``;
    ``policy_domain`` the recipient domain the policy was looked up for (None: not an MX
    delivery, reported nowhere); ``policy_strings`` the MTA-STS policy's lines or the TLSA
    records in presentation format; ``mx_patterns`` an MTA-STS policy's ``mx`` values.

    DANE (:mod:`mailwarden.delivery.dane`): ``tlsa`` the usable TLSA records as (usage,
    selector, matching type, data), which alone authenticate the server when not empty;
    ``dane_names`` the reference names DANE-TA(2) checks (TLSA base domain first);
    ``dane_failure`` set when the TLSA lookup itself failed (RFC 8460 ``dnssec-invalid``):
    the host must not be tried (RFC 7672 §2.1.1).

    MTA-STS (:mod:`mailwarden.delivery.mta_sts`): ``refused``: when set, the target this
    policy was chosen for must not be used at all (an MX host an enforced policy does not
    list, RFC 8461 §5); the attempt moves on to the next target without connecting, and the
    text says why. ``policy_failure``: an RFC 8460 result type found when the policy was
    looked up, reported but not enforced (``sts-policy-fetch-error``, ``sts-webpki-invalid``,
    ``sts-policy-invalid``; or ``validation-failure`` for an MX host a ``testing`` policy
    does not list).

    ``client_certificate`` and ``client_key``: PEM files presented to servers that ask for a
    client certificate (a smarthost that authenticates its clients so). ``sni``: the name sent
    in the TLS server_name extension (RFC 6066 §3); None means the name verified (the
    ``verify_name``, else the host). ``min_version``: the oldest protocol offered
    (``"TLSv1.2"`` or ``"TLSv1.3"``, as the listeners' ``tls_min_version``)."""

    mode: TlsMode = TlsMode.OPTIONAL
    verify_name: str | None = None
    ca_file: Path | None = None
    source: str = "config"
    policy_type: str = "no-policy-found"
    policy_domain: str | None = None
    policy_strings: tuple[str, ...] = ()
    mx_patterns: tuple[str, ...] = ()
    tlsa: tuple[tuple[int, int, int, bytes], ...] = ()
    dane_names: tuple[str, ...] = ()
    dane_failure: str | None = None
    client_certificate: Path | None = None
    client_key: Path | None = None
    sni: str | None = None
    min_version: str = "TLSv1.2"
    refused: str | None = None
    policy_failure: str | None = None

    @property
    def verifies(self) -> bool:
        return self.mode in (TlsMode.OPTIONAL_VERIFY, TlsMode.REQUIRED_VERIFY)

    @property
    def dane(self) -> bool:
        """The server is authenticated by TLSA records (RFC 7672 §3), not by a CA."""
        return bool(self.tlsa)

    @property
    def requires(self) -> bool:
        return self.mode in (TlsMode.REQUIRED, TlsMode.REQUIRED_VERIFY)


# ---------------------------------------------------------------- client contexts

# Verification results as RFC 8460 §4.3 names them (the TLSRPT result types), from OpenSSL's
# X509_V_ERR_* codes; anything else is the general "validation-failure".
_HOSTNAME_MISMATCH = 62  # X509_V_ERR_HOSTNAME_MISMATCH
_IP_ADDRESS_MISMATCH = 64  # X509_V_ERR_IP_ADDRESS_MISMATCH
_EXPIRED = 10  # X509_V_ERR_CERT_HAS_EXPIRED
_NOT_TRUSTED = frozenset(
    {
        2,  # unable to get issuer certificate
        18,  # depth zero self-signed certificate
        19,  # self-signed certificate in chain
        20,  # unable to get local issuer certificate
        21,  # unable to verify the first certificate
        27,  # certificate not trusted
    }
)


MIN_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


def client_context(policy: TlsPolicy, *, check_hostname: bool = True) -> ssl.SSLContext:
    """The SSL context for STARTTLS under ``policy``.

    Verifying modes (``optional_verify``, ``required_verify``): the certificate must chain to
    ``policy.ca_file`` (a PEM bundle) or, without one, to the system store, and match the name
    passed as ``server_hostname`` (``check_hostname``; False when the caller checks the name
    itself because the SNI it sends is another name). The other modes accept any certificate
    (opportunistic TLS, RFC 7435: encryption without authentication beats plaintext). The
    policy's client certificate is presented when a server asks for one; protocols older
    than ``policy.min_version`` are not offered.

    Contexts are cached (loading a CA store costs milliseconds; thousands of connections a
    second share one), keyed by the files' modification times so a replaced bundle or
    certificate is read again. Raises OSError or ssl.SSLError when a file cannot be read or
    the key does not match the certificate, ValueError for an unknown ``min_version``."""
    ca_file = policy.ca_file if policy.verifies else None
    if policy.min_version not in MIN_VERSIONS:
        raise ValueError(
            f"min_version {policy.min_version!r}: expected one of {list(MIN_VERSIONS)}"
        )
    files = (ca_file, policy.client_certificate, policy.client_key)
    mtimes = tuple(path.stat().st_mtime_ns if path is not None else 0 for path in files)
    return _context(
        policy.verifies,
        ca_file,
        policy.client_certificate,
        policy.client_key,
        policy.min_version,
        check_hostname,
        mtimes,
    )


@functools.lru_cache(maxsize=32)
def _context(
    verify: bool,
    ca_file: Path | None,
    certificate: Path | None,
    key: Path | None,
    min_version: str,
    check_hostname: bool,
    _mtimes: tuple[int, ...],
) -> ssl.SSLContext:
    if verify:
        # CERT_REQUIRED and check_hostname; the system store only when no bundle is named.
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        context.check_hostname = check_hostname
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.minimum_version = MIN_VERSIONS[min_version]
    if certificate is not None:
        # Sent only when the server asks (CertificateRequest, RFC 8446 §4.3.2).
        context.load_cert_chain(str(certificate), str(key) if key is not None else None)
    return context


def certificate_problem(certificate: Path, key: Path | None) -> str | None:
    """Why the pair cannot be presented (unreadable, not PEM, key not matching the
    certificate), or None when it can. For the configuration's validation."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_cert_chain(str(certificate), str(key) if key is not None else None)
    except ssl.SSLError as error:  # before OSError, its base class
        if error.reason == "KEY_VALUES_MISMATCH":
            return "the key does not match the certificate"
        return f"not a PEM certificate and key ({error.reason or error})"
    except OSError as error:
        return error.strerror or str(error)
    return None


def verification_failure(error: BaseException) -> str:
    """The RFC 8460 result type for a failed handshake: ``certificate-host-mismatch``,
    ``certificate-expired``, ``certificate-not-trusted`` or ``validation-failure``."""
    if isinstance(error, ssl.SSLCertVerificationError):
        code = error.verify_code
        if code in (_HOSTNAME_MISMATCH, _IP_ADDRESS_MISMATCH):
            return "certificate-host-mismatch"
        if code == _EXPIRED:
            return "certificate-expired"
        if code in _NOT_TRUSTED:
            return "certificate-not-trusted"
    return "validation-failure"


def certificate_matches(der: bytes, name: str) -> bool:
    """Whether the DER certificate is issued for ``name``: a DNS name of its subjectAltName,
    with a wildcard only as the whole left-most label (RFC 6125 §6.4.3), or an IP address
    entry. Used when the SNI sent differs from the name verified, so OpenSSL's own check
    (which compares with the SNI) cannot be used."""
    from cryptography import x509  # only for this rarer case

    certificate = x509.load_der_x509_certificate(der)
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    wanted = name.lower().rstrip(".")
    try:
        address = ipaddress.ip_address(wanted.strip("[]"))
    except ValueError:
        address = None
    if address is not None:
        return address in names.get_values_for_type(x509.IPAddress)
    for dns_name in names.get_values_for_type(x509.DNSName):
        pattern = dns_name.lower().rstrip(".")
        if pattern == wanted:
            return True
        if pattern.startswith("*.") and "." in wanted and wanted.split(".", 1)[1] == pattern[2:]:
            return True
    return False
