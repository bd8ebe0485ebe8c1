"""The typed objects a policy hook receives: the connection, the transaction, the message.

Which hook gets which of them, and what it may answer, is the registry in
:mod:`mailwarden.policy.hooks` (the one list of hooks; docs/policy.md is checked against it).
"""

from __future__ import annotations

import io
import mmap
import os
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from mailwarden.auth.certificates import PeerCertificate
from mailwarden.auth.sasl import Credentials
from mailwarden.policy import editing, mime
from mailwarden.policy.editing import PartInfo
from mailwarden.policy.headers import Headers
from mailwarden.queue.retention import parse_on_expiry, parse_retention
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
    "PartInfo",
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
    retention: float | None = None  # held: seconds kept (inf: for ever; None: the default)
    on_expiry: str = "discard"  # held: what the end of the retention does

    def hold(
        self,
        reason: str = "held by policy",
        retention: float | str | None = None,
        on_expiry: str = "discard",
    ) -> None:
        """Keep the message for this recipient in quarantine instead of queueing it, for
        ``retention`` (as :class:`~mailwarden.policy.actions.Hold` takes it: ``"7d"``,
        seconds, ``"forever"``; None: ``[queue] hold_retention``), then discard it (or, with
        ``on_expiry="bounce"``, bounce it). Raises ValueError for a value it cannot read."""
        kept = None if retention is None else parse_retention(retention)
        expiry = parse_on_expiry(on_expiry).value
        self.state, self.reason = RecipientState.HELD, reason
        self.retention, self.on_expiry = kept, expiry

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
    """The received message at end of data. ``headers`` is editable, and so is the body: text
    added at its start or end, MIME parts replaced or removed. The body is read on demand,
    because it may live in a spool file rather than in memory.

    Until the body is edited nothing of it is copied: the spool keeps the file it was received
    into. The first body edit maps the body (read-only, an mmap for a spool file) and builds a
    tree of offsets into it (:mod:`mailwarden.policy.mime`); what is spooled, ``size``,
    ``open_body()`` and ``raw()`` then give the edited body, assembled from the untouched
    octets and the edited parts."""

    __slots__ = (
        "_body_size",
        "_handle",
        "_open_body",
        "_separator",
        "_signed_by",
        "_source",
        "_tree",
        "headers",
    )

    def __init__(
        self,
        headers: Headers,
        body_size: int,
        open_body: Callable[[], BinaryIO],
        *,
        has_body: bool = True,
    ) -> None:
        self.headers = headers
        self._body_size = body_size
        self._open_body = open_body
        # A message whose header section was never ended by a blank line has no separator.
        self._separator = b"\r\n" if has_body else b""
        self._tree: mime.Entity | None = None
        self._source: mime.Source = b""
        self._handle: BinaryIO | None = None
        self._signed_by: str | None = None

    @property
    def body_size(self) -> int:
        """Octets of the body, edits included."""
        if self.body_edited:
            assert self._tree is not None
            return mime.size(self._tree, self._source)
        return self._body_size

    @property
    def size(self) -> int:
        """Size in octets of the message as it will be stored (headers and body as edited)."""
        return len(self.headers.to_bytes()) + len(self._separator) + self.body_size

    @property
    def body_edited(self) -> bool:
        """Whether a body edit was made (the spool then stores the rebuilt body)."""
        return self._tree is not None and self._tree.dirty

    def open_body(self) -> BinaryIO:
        """A binary file positioned at the start of the body (as edited); close it when done."""
        if self.body_edited:
            return io.BufferedReader(_ChunkReader(self.body_chunks()))
        return self._open_body()

    async def body(self) -> bytes:
        """The whole body in memory. Mind large messages; prefer ``open_body`` to stream."""
        with self.open_body() as handle:
            return handle.read()

    async def raw(self) -> bytes:
        """Headers (as edited so far), the blank line and the body: the message as stored."""
        return self.headers.to_bytes() + self._separator + await self.body()

    # --- body edits (see docs/policy.md "Message") -------------------------------------------

    async def parts(self) -> list[PartInfo]:
        """Every part of the body in tree order, numbered as ``dlp.scan`` numbers them."""
        return editing.describe(self._parsed(), self._source)

    async def prepend_text(self, text: str, *, html: str | None = None) -> list[str]:
        """Put ``text`` at the start of the body's text: the first text/plain part, and the
        first text/html part (``html`` there, else ``text`` escaped, right after ``<body>``).
        Returns the paths of the parts changed; empty if the body has no text part."""
        changed = editing.insert_text(self._for_edit(), self._source, text, html, "start")
        self._edited()
        return changed

    async def append_text(self, text: str, *, html: str | None = None) -> list[str]:
        """As :meth:`prepend_text`, at the end (HTML: before ``</body>``): a footer."""
        changed = editing.insert_text(self._for_edit(), self._source, text, html, "end")
        self._edited()
        return changed

    async def replace_part(
        self,
        part: editing.PartRef | str,
        new_content: str | bytes,
        *,
        content_type: str | None = None,
        filename: str | None = None,
    ) -> None:
        """Replace a part (a path, a :class:`PartInfo` or a ``dlp.Part``) by ``new_content``:
        text as text/plain unless ``content_type`` says otherwise, bytes as
        application/octet-stream; ``filename`` makes it an attachment. Raises ValueError for
        a part the message does not have or a malformed ``content_type``."""
        editing.replace(
            self._for_edit(), part, new_content, content_type=content_type, filename=filename
        )
        self._edited()

    async def remove_part(self, part: editing.PartRef | str) -> None:
        """Remove a part of a multipart. Raises ValueError for a part the message does not
        have, for the only part of a multipart and for a message's body: replace those."""
        editing.remove(self._for_edit(), part)
        self._edited()

    def body_chunks(self) -> Iterator[bytes]:
        """The body as stored, a piece at a time (the server spools an edited body this way)."""
        if not self.body_edited:
            with self._open_body() as handle:
                while piece := handle.read(1024 * 1024):
                    yield piece
            return
        assert self._tree is not None
        yield from mime.chunks(self._tree, self._source)

    def close(self) -> None:
        """Release the mapped body (the server calls this once the message is spooled)."""
        source, self._source = self._source, b""
        if isinstance(source, mmap.mmap):
            source.close()
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def mark_signed(self, signature: str) -> None:
        """Record that ``signature`` (e.g. "DKIM-Signature") now covers the body: a later body
        edit would break it, so it raises ValueError instead. :func:`mailwarden.lib.dkim.sign`
        and :func:`mailwarden.lib.arc.seal` call this; header edits stay the script's care."""
        self._signed_by = signature

    def _for_edit(self) -> mime.Entity:
        if self._signed_by is not None:
            raise ValueError(
                f"the body is covered by a {self._signed_by} already; edit it before signing"
            )
        return self._parsed()

    def _parsed(self) -> mime.Entity:
        if self._tree is None:
            self._source = self._load()
            self._tree = mime.parse(self._source, self.headers)
        return self._tree

    def _load(self) -> mime.Source:
        handle = self._open_body()
        if isinstance(handle, io.BytesIO):
            with handle:
                return handle.getvalue()
        try:
            fileno = handle.fileno()
            if os.fstat(fileno).st_size == 0:
                handle.close()
                return b""
            self._handle = handle
            return mmap.mmap(fileno, 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError, io.UnsupportedOperation):
            with handle:
                return handle.read()

    def _edited(self) -> None:
        if self.body_edited:
            editing.ensure_mime_version(self.headers)
            if not self._separator:
                self._separator = b"\r\n"


class _ChunkReader(io.RawIOBase):
    """A read-only file over an iterator of byte strings (the edited body, streamed)."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self._pieces = pieces
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            piece = next(self._pieces, None)
            if piece is None:
                return 0
            self._pending = memoryview(piece)
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count


def memory_body(data: bytes) -> Callable[[], BinaryIO]:
    return lambda: io.BytesIO(data)


HookResult = Awaitable[Any]
