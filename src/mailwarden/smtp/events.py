"""Events the protocol core emits, one per client action that the server must decide on.

Events marked *needs a reply* pause the core until the server answers with
:meth:`SmtpConnection.accept` or :meth:`SmtpConnection.send_reply`; the others are notices.
"""

from __future__ import annotations

from dataclasses import dataclass

from mailwarden.smtp.address import Path


@dataclass(frozen=True, slots=True)
class Helo:
    """HELO or EHLO with a valid argument. Needs a reply."""

    name: str
    extended: bool


@dataclass(frozen=True, slots=True)
class StartTls:
    """STARTTLS got 220: upgrade the transport, then call ``tls_established``."""


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """AUTH with a known mechanism. Needs a reply (235, 535, or a challenge).

    ``initial_response`` is the decoded RFC 4954 initial response, ``b""`` for ``=``, or None.
    """

    mechanism: str
    initial_response: bytes | None


@dataclass(frozen=True, slots=True)
class AuthResponse:
    """The client's decoded answer to a SASL challenge. Needs a reply."""

    data: bytes


@dataclass(frozen=True, slots=True)
class MailFrom:
    """MAIL FROM with a valid path and supported parameters. Needs a reply."""

    path: Path


@dataclass(frozen=True, slots=True)
class RcptTo:
    """RCPT TO with a valid path and supported parameters. Needs a reply."""

    path: Path


@dataclass(frozen=True, slots=True)
class MessageStart:
    """DATA got 354, or the first BDAT chunk began: message content follows."""

    chunking: bool


@dataclass(frozen=True, slots=True)
class MessageData:
    """A piece of message content, dot-unstuffed, line endings as received."""

    data: bytes


@dataclass(frozen=True, slots=True)
class MessageComplete:
    """End of data (``CRLF.CRLF`` or ``BDAT … LAST``), content valid. Needs a reply."""


@dataclass(frozen=True, slots=True)
class MessageAborted:
    """Discard what was stored for the open message: its content broke a rule (the core
    already sent the 5xx), or the connection closed before the message ended."""

    reason: str


@dataclass(frozen=True, slots=True)
class TransactionReset:
    """RSET, a new EHLO or STARTTLS ended the open transaction; discard it."""


@dataclass(frozen=True, slots=True)
class Vrfy:
    """VRFY with its argument. Needs a reply (``accept`` sends 252)."""

    argument: str


@dataclass(frozen=True, slots=True)
class ConnectionClosing:
    """The core has queued its last reply (QUIT, 421, too many errors); close after sending."""

    reason: str


Event = (
    Helo
    | StartTls
    | AuthRequest
    | AuthResponse
    | MailFrom
    | RcptTo
    | MessageStart
    | MessageData
    | MessageComplete
    | MessageAborted
    | TransactionReset
    | Vrfy
    | ConnectionClosing
)
