"""What every ping shares (the prebuilt plan) and what each one measured.

Kept free of asyncio and ssl so that a plain run, which never needs them, does not
pay for importing them at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .message import Payload

if TYPE_CHECKING:
    import ssl

# Indexes into PingResult.marks, in 1.1's order after connect.
BANNER, HELO, MAILFROM, RCPTTO, DATA, DATASENT, QUIT = range(7)
TIMEOUT_CODE = -1
CLOSED_CODE = 0


@dataclass(frozen=True, slots=True)
class SessionPlan:
    """Everything that stays the same from one ping to the next, prebuilt as bytes."""

    helo_command: bytes
    mail_command: bytes
    rcpt_commands: tuple[bytes, ...]
    payload: Payload
    timeout_s: float
    helo_label: str = "HELO"
    bind_address: tuple[object, ...] | None = None
    tls_context: ssl.SSLContext | None = None
    implicit_tls: bool = False
    starttls: bool = False
    server_hostname: str | None = None
    auth: tuple[str, str] | None = None
    auth_mech: str | None = None
    debug: bool = False

    @property
    def plain(self) -> bool:
        """No TLS and no AUTH: the raw-socket engine can run it."""
        return not (self.starttls or self.implicit_tls or self.auth)


class PingResult:
    """What one transaction measured, or where it stopped.

    ``marks`` holds nanoseconds since the end of the TCP connect for each phase
    reached (banner .. quit); ``failure`` names the failed step in 1.1's words
    (``connect``, ``bind``, ``BANNER``, ``HELO``, ``MAIL FROM``, ``RCPT TO``,
    ``DATA``, ``EOM``, ``QUIT``, plus ``STARTTLS``, ``TLS``, ``AUTH``).
    """

    __slots__ = ("code", "connect_ns", "detail", "eom_code", "failure", "marks")

    def __init__(self) -> None:
        self.connect_ns: int | None = None
        self.marks: list[int] = []
        self.failure: str | None = None
        self.code: int | None = None
        self.detail: str = ""
        self.eom_code: int | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None
