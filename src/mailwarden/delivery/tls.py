"""The outbound TLS policy of a route or destination.

One object says what an attempt requires of TLS, so that MTA-STS (RFC 8461) and DANE
(RFC 7672) can later set the same fields (``source`` says which policy applied) without a
second code path.
"""

from __future__ import annotations

import enum
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
    ``source``: which policy decided (``config``, ``route``, ``script``; later ``mta-sts``,
    ``dane``), reported to post_delivery and in TLS reports."""

    mode: TlsMode = TlsMode.OPTIONAL
    verify_name: str | None = None
    ca_file: Path | None = None
    source: str = "config"

    @property
    def verifies(self) -> bool:
        return self.mode in (TlsMode.OPTIONAL_VERIFY, TlsMode.REQUIRED_VERIFY)

    @property
    def requires(self) -> bool:
        return self.mode in (TlsMode.REQUIRED, TlsMode.REQUIRED_VERIFY)
