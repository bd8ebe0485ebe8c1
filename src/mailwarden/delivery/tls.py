"""The outbound TLS policy of a route or destination.

One object says what an attempt requires of TLS, so that MTA-STS (RFC 8461) and DANE
(RFC 7672) can later set the same fields (``source`` says which policy applied) without a
second code path. :func:`client_context` builds the SSL context a policy asks for.
"""

from __future__ import annotations

import enum
import functools
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

    ``refused``: when set, the target this policy was chosen for must not be used at all (an
    MX host an enforced MTA-STS policy does not list, RFC 8461 §5); the attempt moves on to
    the next target without connecting, and the text says why. ``policy_failure``: an RFC
    8460 result type found when the policy was looked up, reported but not enforced
    (``sts-policy-fetch-error``, ``sts-webpki-invalid``, ``sts-policy-invalid``; or
    ``validation-failure`` for an MX host a ``testing`` policy does not list)."""

    mode: TlsMode = TlsMode.OPTIONAL
    verify_name: str | None = None
    ca_file: Path | None = None
    source: str = "config"
    policy_type: str = "no-policy-found"
    policy_domain: str | None = None
    policy_strings: tuple[str, ...] = ()
    mx_patterns: tuple[str, ...] = ()
    refused: str | None = None
    policy_failure: str | None = None

    @property
    def verifies(self) -> bool:
        return self.mode in (TlsMode.OPTIONAL_VERIFY, TlsMode.REQUIRED_VERIFY)

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


def client_context(policy: TlsPolicy) -> ssl.SSLContext:
    """The SSL context for STARTTLS under ``policy``.

    Verifying modes (``optional_verify``, ``required_verify``): the certificate must chain to
    ``policy.ca_file`` (a PEM bundle) or, without one, to the system store, and match the name
    passed as ``server_hostname`` (``check_hostname``). The other modes accept any certificate
    (opportunistic TLS, RFC 7435: encryption without authentication beats plaintext).
    Contexts are cached (loading a CA store costs milliseconds; thousands of connections a
    second share one), keyed by the CA file's modification time so a replaced bundle is read
    again. Raises OSError or ssl.SSLError when the CA file cannot be read."""
    ca_file = policy.ca_file if policy.verifies else None
    mtime = ca_file.stat().st_mtime_ns if ca_file is not None else 0
    return _context(policy.verifies, ca_file, mtime)


@functools.lru_cache(maxsize=32)
def _context(verify: bool, ca_file: Path | None, _mtime: int) -> ssl.SSLContext:
    if verify:
        # CERT_REQUIRED and check_hostname; the system store only when no bundle is named.
        return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


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
