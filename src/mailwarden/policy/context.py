"""The typed objects a policy hook receives: the connection, the transaction, the message.

Which hook gets which of them, and what it may answer, is the registry in
:mod:`mailwarden.policy.hooks` (the one list of hooks; docs/policy.md is checked against it).
"""

from __future__ import annotations

import io
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from mailwarden.auth.certificates import PeerCertificate
from mailwarden.auth.sasl import Credentials
from mailwarden.policy.headers import Headers
from mailwarden.spool.states import RecipientState  # one vocabulary with the spool

# What the auth hook receives is what SASL produced (mailwarden.auth owns it; auth/ imports
# nothing from policy/). Re-exported here, so scripts import every context from one module.
__all__ = [
    "AuthIdentity",
    "Connection",
    "Credentials",
    "Helo",
    "HookResult",
    "Message",
    "PeerCertificate",
    "Recipient",
    "RecipientState",
    "Sender",
    "TlsInfo",
    "Transaction",
    "memory_body",
    "server_update",
]


@dataclass(frozen=True, slots=True)
class TlsInfo:
    """The TLS session of a connection (after STARTTLS, or from the start on an implicit-TLS
    listener): protocol (``"TLSv1.3"``), cipher, key bits, the name the client asked for by
    SNI (None when it sent none) and the client's certificate (None when it sent none; see
    :class:`PeerCertificate`, re-exported here from :mod:`mailwarden.auth.certificates`).

    ``peer_certificate_subject`` is the subject of ``peer_certificate``, kept for scripts
    written before ``peer_certificate`` existed."""

    protocol: str
    cipher: str
    bits: int
    peer_certificate_subject: str | None = None
    sni: str | None = None
    peer_certificate: PeerCertificate | None = None


@dataclass(frozen=True, slots=True)
class AuthIdentity:
    """Who the client authenticated as (RFC 4954)."""

    username: str
    mechanism: str


class Connection:
    """One client connection, as scripts see it.

    Every field but ``state`` is a fact the server owns (who the client is, what it proved with
    TLS and AUTH, whether its address is trusted) and is read-only: assigning one raises
    AttributeError, which in a hook is a script error. ``state`` is the script's own dict, kept
    across hooks. The relay rule does not read these fields at all: the session decides from
    its own copies, so nothing a script does to this object can open the relay.
    """

    __slots__ = (
        "_auth",
        "_esmtp",
        "_helo_name",
        "_id",
        "_local_ip",
        "_local_port",
        "_remote_ip",
        "_remote_port",
        "_reverse_done",
        "_reverse_name",
        "_server_id",
        "_tls",
        "_trusted",
        "state",
    )

    def __init__(
        self,
        id: str,
        server_id: str,
        remote_ip: str,
        remote_port: int,
        local_ip: str,
        local_port: int,
        *,
        helo_name: str | None = None,
        esmtp: bool = False,
        tls: TlsInfo | None = None,
        auth: AuthIdentity | None = None,
        trusted: bool = False,
        state: dict[str, Any] | None = None,
    ) -> None:
        # Building one with every fact given is for tests of scripts; the server passes the
        # facts it knows at connect and records the others with server_update().
        set_field = object.__setattr__
        set_field(self, "_id", id)
        set_field(self, "_server_id", server_id)
        set_field(self, "_remote_ip", remote_ip)
        set_field(self, "_remote_port", remote_port)
        set_field(self, "_local_ip", local_ip)
        set_field(self, "_local_port", local_port)
        set_field(self, "_trusted", trusted)
        set_field(self, "_helo_name", helo_name)
        set_field(self, "_esmtp", esmtp)
        set_field(self, "_tls", tls)
        set_field(self, "_auth", auth)
        set_field(self, "_reverse_name", None)
        set_field(self, "_reverse_done", False)
        set_field(self, "state", {} if state is None else state)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "state":
            object.__setattr__(self, name, value)
            return
        raise AttributeError(f"conn.{name} is set by the server and read-only to scripts")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"conn.{name} is set by the server and cannot be deleted")

    def __repr__(self) -> str:
        return (
            f"Connection(id={self._id!r}, server_id={self._server_id!r}, "
            f"remote_ip={self._remote_ip!r}, remote_port={self._remote_port}, "
            f"helo_name={self._helo_name!r}, tls={self._tls is not None}, "
            f"auth={self._auth!r}, trusted={self._trusted})"
        )

    # --- read-only facts ---------------------------------------------------------------------

    @property
    def id(self) -> str:
        """Connection id, as in the logs."""
        return self._id

    @property
    def server_id(self) -> str:
        """The listener's ``id``."""
        return self._server_id

    @property
    def remote_ip(self) -> str:
        return self._remote_ip

    @property
    def remote_port(self) -> int:
        return self._remote_port

    @property
    def local_ip(self) -> str:
        return self._local_ip

    @property
    def local_port(self) -> int:
        return self._local_port

    @property
    def helo_name(self) -> str | None:
        """The accepted HELO/EHLO argument (None before it and right after STARTTLS)."""
        return self._helo_name

    @property
    def esmtp(self) -> bool:
        """The client used EHLO."""
        return self._esmtp

    @property
    def tls(self) -> TlsInfo | None:
        return self._tls

    @property
    def auth(self) -> AuthIdentity | None:
        return self._auth

    @property
    def trusted(self) -> bool:
        """``remote_ip`` is in the server's ``trusted_networks``."""
        return self._trusted

    async def reverse_name(self) -> str | None:
        """The PTR name of ``remote_ip`` (looked up once, on first use; None if there is none).

        Lookup failures and timeouts give None; they never raise into the script.
        """
        if not self._reverse_done:
            object.__setattr__(self, "_reverse_name", await _lookup_ptr(self._remote_ip))
            object.__setattr__(self, "_reverse_done", True)
        return self._reverse_name


def server_update(conn: Connection, **facts: Any) -> None:
    """The server's way to record a new fact (``helo_name``, ``esmtp``, ``tls``, ``auth``) on
    ``conn``; scripts cannot assign them (see :class:`Connection`)."""
    for name, value in facts.items():
        if name not in ("helo_name", "esmtp", "tls", "auth"):
            raise AttributeError(f"conn.{name} is not a fact the server updates")
        object.__setattr__(conn, f"_{name}", value)


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


@dataclass(slots=True)
class Sender:
    """The MAIL FROM address (``""`` for the null sender) and its parameters."""

    address: str
    params: dict[str, str | None]


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
