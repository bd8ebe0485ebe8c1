"""What the delivery hooks see and decide: ``pre_delivery(attempt)`` before each attempt and
``post_delivery(attempt, result)`` after it (Halon's pre- and post-delivery scripts).

``attempt`` describes one message going to one destination (the recipients of one domain, or
of one route). ``pre_delivery`` may change how it goes (``next_hop``, ``port``, ``protocol``,
``source_ip``, ``helo``, ``tls``, ``auth``) or return an action instead: :class:`Retry` (queue
for later, without counting a retry unless ``count``), ``Hold`` (quarantine), :class:`Bounce`
(fail the recipients now with this NDR), :class:`Delete` (drop them, no DSN).
``post_delivery`` sees each recipient's reply and the session's facts, and may return the same
actions to override what would happen next to the recipients that were not delivered.

A hook that raises, times out or returns something else never loses a message: the attempt's
recipients are queued for a later try (``pre_delivery``: 5 minutes, not counted as a retry,
as Halon does; ``post_delivery``: what the replies alone decide).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mailwarden.delivery.connection import TlsOutcome
from mailwarden.delivery.errors import DeliveryReply
from mailwarden.policy.actions import Hold

__all__ = [
    "AttemptRecipient",
    "Bounce",
    "Delete",
    "DeliveryAttempt",
    "DeliveryResult",
    "Hold",
    "RecipientDelivery",
    "Retry",
]


@dataclass(frozen=True, slots=True)
class Retry:
    """Try again later: ``delay`` seconds from now, or at ``at`` (Unix time); neither: the
    retry schedule's next step. ``count`` adds one to the recipients' retry count."""

    delay: float | None = None
    at: float | None = None
    reason: str = "retry requested by policy"
    count: bool = False

    def __post_init__(self) -> None:
        if self.delay is not None and self.delay < 0:
            raise ValueError("Retry(delay=...) must not be negative")


@dataclass(frozen=True, slots=True)
class Bounce:
    """Fail the recipients for good, with this NDR in their DSN (RFC 3464 Status and
    Diagnostic-Code). Raises ValueError unless ``code`` is 5xx and ``enhanced`` 5.x.x."""

    text: str = "delivery refused by policy"
    code: int = 550
    enhanced: str = "5.0.0"

    def __post_init__(self) -> None:
        if not 500 <= self.code <= 599:
            raise ValueError(f"Bounce(code={self.code}) must be 5xx")
        DeliveryReply(self.code, self.enhanced, self.text)  # raises ValueError if inconsistent

    @property
    def reply(self) -> DeliveryReply:
        return DeliveryReply(self.code, self.enhanced, self.text)


@dataclass(frozen=True, slots=True)
class Delete:
    """Drop the recipients: no delivery, no DSN."""

    reason: str = "deleted by policy"


DeliveryAction = Retry | Hold | Bounce | Delete
DELIVERY_ACTIONS: tuple[type, ...] = (Retry, Hold, Bounce, Delete)


@dataclass(frozen=True, slots=True)
class AttemptRecipient:
    address: str
    params: Mapping[str, str | None]
    metadata: Mapping[str, Any]
    retry_count: int
    position: int  # in RCPT order


@dataclass(slots=True)
class DeliveryAttempt:
    """One attempt: a message, the recipients of one destination, and how it will go.

    Read-only facts: ``message_id``, ``sender``, ``recipients``, ``domain``, ``metadata`` (the
    message's script metadata), ``size``, ``received_at``, ``retry_count`` (the recipients'
    highest). What ``pre_delivery`` may set: ``next_hop`` (``"[10.0.0.5]:2525"``,
    ``"relay.example"``; None: MX of ``domain``), ``port``, ``protocol`` (``smtp``/``lmtp``),
    ``source_ip`` (a local address), ``helo``, ``tls`` (a TLS mode name: ``none``,
    ``optional``, ``optional_verify``, ``required``, ``required_verify``),
    ``tls_verify_name``, ``tls_sni``, ``tls_min_version`` (``TLSv1.2``/``TLSv1.3``),
    ``tls_client_certificate`` and ``tls_client_key`` (PEM file paths), ``auth``
    (``(username, password)`` or None)."""

    message_id: str
    sender: str
    recipients: tuple[AttemptRecipient, ...]
    domain: str
    metadata: Mapping[str, Any]
    size: int
    received_at: float
    retry_count: int
    next_hop: str | None = None
    port: int | None = None
    protocol: str = "smtp"
    source_ip: str | None = None
    helo: str = ""
    tls: str = "optional"
    tls_verify_name: str | None = None
    tls_sni: str | None = None
    tls_min_version: str = "TLSv1.2"
    # PEM files (paths) of the client certificate presented; both or neither.
    tls_client_certificate: str | None = None
    tls_client_key: str | None = None
    auth: tuple[str, str] | None = field(default=None, repr=False)  # never in logs


@dataclass(frozen=True, slots=True)
class RecipientDelivery:
    """What happened to one recipient in the attempt."""

    address: str
    position: int
    code: int
    enhanced: str
    text: str
    remote: bool  # the remote's own reply (else Mailwarden's: DNS, connection, TLS, ...)

    @property
    def delivered(self) -> bool:
        return self.code < 300

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500

    @property
    def permanent(self) -> bool:
        return self.code >= 500


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """The attempt's outcome: per recipient, and the session's facts (Halon's ``$sourceip``
    is ``source_ip``). ``error`` names the stage that failed the whole attempt (``dns``,
    ``connect``, ``tls``, ...) or is None when every recipient got the remote's own reply."""

    recipients: tuple[RecipientDelivery, ...]
    remote_ip: str | None = None
    remote_mx: str | None = None
    remote_port: int | None = None
    source_ip: str | None = None
    helo: str | None = None
    tls_protocol: str | None = None
    tls_cipher: str | None = None
    tls_verified: bool = False
    tls_failure: str | None = None
    tls_policy: str | None = None
    # Which policy decided the TLS mode: "config", "route", "script", "mta-sts" or "dane".
    tls_policy_source: str | None = None
    # The whole TLS outcome (None: no connection): protocol, cipher, verified, failure, the
    # policy applied (``tls.policy.source`` and ``.mode``) and ``tls.peer_certificate``, the
    # server's certificate as mailwarden.auth.certificates.PeerCertificate.
    tls: TlsOutcome | None = None
    error: str | None = None
    connect_seconds: float | None = None  # time to open the connection (None: reused)
    seconds: float = 0.0  # the transaction, start to end
    reused: bool = False  # the connection had carried a message before
