"""The typed objects a policy hook receives: the connection, the transaction, the message.

One contract for every hook (see docs/policy.md)::

    async def connect(conn: Connection) -> Action | None
    async def helo(conn: Connection, helo: Helo) -> Action | None
    async def auth(conn: Connection, credentials: Credentials) -> Action | None
    async def mail_from(conn: Connection, tx: Transaction, sender: Sender) -> Action | None
    async def rcpt_to(conn: Connection, tx: Transaction, recipient: Recipient) -> Action | None
    async def data(conn: Connection, tx: Transaction, message: Message) -> Action | None
    async def vrfy(conn: Connection, argument: str) -> Action | None
    async def disconnect(conn: Connection) -> None
"""

from __future__ import annotations

import enum
import io
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from mailwarden.policy.headers import Headers


@dataclass(frozen=True, slots=True)
class TlsInfo:
    """The TLS session of a connection (after STARTTLS)."""

    protocol: str
    cipher: str
    bits: int
    peer_certificate_subject: str | None = None


@dataclass(frozen=True, slots=True)
class AuthIdentity:
    """Who the client authenticated as (RFC 4954)."""

    username: str
    mechanism: str


@dataclass(slots=True)
class Connection:
    """One client connection. ``state`` is the script's own dict, kept across hooks."""

    id: str
    server_id: str
    remote_ip: str
    remote_port: int
    local_ip: str
    local_port: int
    helo_name: str | None = None
    esmtp: bool = False
    tls: TlsInfo | None = None
    auth: AuthIdentity | None = None
    trusted: bool = False  # remote_ip is in the server's trusted_networks
    state: dict[str, Any] = field(default_factory=dict)
    _reverse_name: str | None = field(default=None, repr=False)
    _reverse_done: bool = field(default=False, repr=False)

    async def reverse_name(self) -> str | None:
        """The PTR name of ``remote_ip`` (looked up once, on first use; None if there is none).

        Lookup failures and timeouts give None; they never raise into the script.
        """
        if not self._reverse_done:
            self._reverse_name = await _lookup_ptr(self.remote_ip)
            self._reverse_done = True
        return self._reverse_name


async def _lookup_ptr(ip: str) -> str | None:
    import dns.asyncresolver
    import dns.exception
    import dns.reversename

    try:
        answer = await dns.asyncresolver.resolve(
            dns.reversename.from_address(ip), "PTR", lifetime=5.0
        )
    except (dns.exception.DNSException, OSError, ValueError):
        return None
    return str(answer[0]).rstrip(".") if answer else None


@dataclass(frozen=True, slots=True)
class Helo:
    name: str
    extended: bool


@dataclass(frozen=True, slots=True)
class Credentials:
    """What the client sent with AUTH. ``authzid`` is the PLAIN authorization identity."""

    mechanism: str
    username: str
    password: str
    authzid: str = ""


@dataclass(slots=True)
class Sender:
    """The MAIL FROM address (``""`` for the null sender) and its parameters."""

    address: str
    params: dict[str, str | None]


class RecipientState(enum.StrEnum):
    ACTIVE = "active"
    HELD = "held"
    DISCARDED = "discarded"


@dataclass(slots=True)
class Recipient:
    """One RCPT TO: address, parameters, script metadata and what the data phase decided."""

    address: str
    params: dict[str, str | None]
    metadata: dict[str, Any] = field(default_factory=dict)
    state: RecipientState = RecipientState.ACTIVE
    reason: str = ""

    def hold(self, reason: str = "held by policy") -> None:
        """Keep the message for this recipient in quarantine instead of queueing it."""
        self.state, self.reason = RecipientState.HELD, reason

    def discard(self, reason: str = "discarded by policy") -> None:
        """Accept for this recipient but never deliver."""
        self.state, self.reason = RecipientState.DISCARDED, reason


@dataclass(slots=True)
class Transaction:
    """The current mail transaction (one MAIL … DATA)."""

    id: str
    sender: Sender | None = None
    recipients: list[Recipient] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)


class Message:
    """The received message at end of data. ``headers`` is editable; the body is read on
    demand, because it may live in a spool file rather than in memory."""

    __slots__ = ("_open_body", "_separator", "body_size", "headers")

    def __init__(
        self,
        headers: Headers,
        body_size: int,
        open_body: Callable[[], BinaryIO],
        *,
        has_body: bool = True,
    ) -> None:
        self.headers = headers
        self.body_size = body_size
        self._open_body = open_body
        # A message whose header section was never ended by a blank line has no separator.
        self._separator = b"\r\n" if has_body else b""

    @property
    def size(self) -> int:
        """Size in octets of the message as it will be stored (headers as edited so far)."""
        return len(self.headers.to_bytes()) + len(self._separator) + self.body_size

    def open_body(self) -> BinaryIO:
        """A binary file positioned at the start of the body; close it when done."""
        return self._open_body()

    async def body(self) -> bytes:
        """The whole body in memory. Mind large messages; prefer ``open_body`` to stream."""
        with self._open_body() as handle:
            return handle.read()

    async def raw(self) -> bytes:
        """Headers (as edited so far), the blank line and the body: the message as stored."""
        return self.headers.to_bytes() + self._separator + await self.body()


def memory_body(data: bytes) -> Callable[[], BinaryIO]:
    return lambda: io.BytesIO(data)


HookResult = Awaitable[Any]
