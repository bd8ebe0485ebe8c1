"""The outbound SMTP/LMTP client as a sans-I/O machine (the server core's twin, h11 style).

It never touches a socket, a clock or a file. The caller (an asyncio adapter in delivery, a test
driver) moves the bytes and keeps the time::

    conn = SmtpClientConnection("mx.sender.example", lmtp=False)
    conn.receive_data(bytes_from_socket)        # b"" when the peer closed
    event = conn.next_event()                   # an Event, or NEED_DATA
    sock.send(conn.data_to_send())              # whatever the commands produced

Commands, each allowed only in the states the table ``_ALLOWED`` names (else
:class:`LocalProtocolError`, naming the state):

- ``ehlo()`` after the greeting: EHLO (LHLO in LMTP mode, RFC 2033 §4.1); a 5xx to EHLO falls
  back to HELO (RFC 5321 §3.2). Emits :class:`HelloDone` with the parsed :class:`Extensions`.
- ``starttls()`` when offered (RFC 3207): on 220 the state is ``AWAITING_TLS`` and
  :class:`TlsReady` is emitted; the caller wraps the socket, then calls ``tls_established()``,
  after which every extension is forgotten and ``ehlo()`` must be sent again (RFC 3207 §4.2).
- ``send_message(envelope, message)``: one transaction. MAIL FROM (with SIZE, BODY, SMTPUTF8,
  RET, ENVID when the server offers them), RCPT TO each recipient (NOTIFY, ORCPT under DSN,
  RFC 3461), then DATA with dot-stuffing and CRLF line ends (RFC 5321 §4.5.2), or BDAT chunks
  when CHUNKING is offered (RFC 3030). With PIPELINING (RFC 2920) MAIL, the RCPTs and DATA go in
  one write. Each recipient's reply comes on its own (:class:`RecipientReply`), then
  :class:`TransactionDone` with the final reply of every recipient; in LMTP mode that is one
  reply per accepted recipient after the data (RFC 2033 §4.2). A transaction that ended before
  its data (no recipient accepted, DATA or BDAT refused) is closed with RSET, so the next
  ``send_message`` can reuse the connection. A message larger than the server's SIZE
  (RFC 1870 §6) raises :class:`MessageTooLarge`, one that needs SMTPUTF8 from a server without it
  raises :class:`ExtensionMissing` (RFC 6531 §3.4), both before anything is sent.
- ``auth(mechanism, username, password)`` when the server offers the mechanism (RFC 4954): PLAIN
  with its initial response (RFC 4616), LOGIN as the two 334 challenges ask (username, then
  password, each base64). Only in ``READY``, not inside a transaction and only once per session
  (RFC 4954 §4); the state is ``AUTH_SENT`` until the final reply, which emits :class:`AuthDone`
  (235, or any 2xx, since smtp-sink answers 250: ``authenticated`` is then True). A 334 the
  mechanism has no answer for is cancelled with ``*`` (§4), and the server's reply to that ends
  the exchange as a failure. Neither the password nor the encoded credentials appear in any
  exception or event.
- ``rset()`` (:class:`ResetDone`), ``quit()`` (:class:`QuitDone`, then :class:`ConnectionClosed`).

Long lines (RFC 5321 §4.5.3.1.6, RFC 5322 §2.1.1: 998 octets before the CRLF). The receiving side
accepts longer lines; on the way out they are broken as Postfix's SMTP client does with its
``smtp_line_length_limit`` (default 998): after every ``line_length_limit`` octets a CRLF is
inserted and the rest of the line continues after one SPACE, so each piece, the space included,
is at most 998 octets; a line of exactly 998 octets is sent as it is. The space makes the pieces
of a header line its folded continuation lines (RFC 5322 §2.2.3) and keeps a piece from starting
with a dot; that is why Postfix chose it ("to minimize the damage to MIME formatted mail").
Dot-stuffing applies to the original line start only, so a stuffed line may carry 999 octets, the
duplicated dot not counting (§4.5.3.1.6). The same applies to BDAT chunks, and SIZE announces the
broken message. ``line_length_limit=0`` sends lines as they are (Postfix's 0). Content is changed
only where a line was too long to send anyway; a DKIM signature over such a line does not survive,
as with Postfix.

The peer's misbehaviour (a line that is not a reply, a code of the wrong class for the command,
a reply nobody asked for, bytes after the 220 to STARTTLS, the connection closed while a reply is
due) raises :class:`RemoteProtocolError` from ``next_event`` and leaves the machine in ``ERROR``.
A 421 (RFC 5321 §3.8) answers every command still waiting, ends the transaction with it and
leaves the machine ``CLOSING``.

Timeouts are the caller's: ``current_timeout()`` says which of the RFC 5321 §4.5.3.2 values
(the ``timeouts`` given, by default :data:`TIMEOUTS`) applies to the reply awaited now, and
``awaiting`` names that reply (``"mail"``, ``"data_end"``, ...) for error messages.
"""

from __future__ import annotations

import base64
import re
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum

from mailwarden.smtp.errors import LocalProtocolError, RemoteProtocolError
from mailwarden.smtp.reply_parser import ReplyError, ReplyParser, ServerReply
from mailwarden.smtp.seven_bit import to_seven_bit

__all__ = [
    "LINE_LENGTH_LIMIT",
    "NEED_DATA",
    "TIMEOUTS",
    "AuthDone",
    "ClientState",
    "ConnectionClosed",
    "Envelope",
    "ExtensionMissing",
    "Extensions",
    "Greeting",
    "HelloDone",
    "LocalProtocolError",
    "MessageTooLarge",
    "QuitDone",
    "Recipient",
    "RecipientReply",
    "RecipientResult",
    "RemoteProtocolError",
    "ResetDone",
    "ServerClosing",
    "SmtpClientConnection",
    "Timeouts",
    "TlsReady",
    "TlsRefused",
    "TransactionDone",
    "fold_long_lines",
]


# RFC 5321 §4.5.3.2: how long a client waits for each reply (seconds). The adapter applies them.
@dataclass(frozen=True)
class Timeouts:
    greeting: float = 300.0  # §4.5.3.2.1 initial 220 message: 5 minutes
    mail: float = 300.0  # §4.5.3.2.2 MAIL command: 5 minutes
    rcpt: float = 300.0  # §4.5.3.2.3 RCPT command: 5 minutes
    data_start: float = 120.0  # §4.5.3.2.4 DATA initiation (the 354): 2 minutes
    data_block: float = 180.0  # §4.5.3.2.5 each send of a data block: 3 minutes
    data_end: float = 600.0  # §4.5.3.2.6 DATA termination (reply to the dot): 10 minutes
    command: float = 300.0  # other commands (EHLO, STARTTLS, RSET, QUIT): as MAIL


TIMEOUTS = Timeouts()

DEFAULT_CHUNK_SIZE = 1 << 20  # BDAT chunk (RFC 3030 leaves the size to the client)
# RFC 5322 §2.1.1 / RFC 5321 §4.5.3.1.6: 998 octets before the CRLF; Postfix's default too.
LINE_LENGTH_LIMIT = 998


class ClientState(Enum):
    CONNECTED = "CONNECTED"  # waiting for the greeting
    GREETED = "GREETED"  # greeting 220, EHLO not yet answered
    REFUSED = "REFUSED"  # greeting other than 220 (RFC 5321 §3.1): only QUIT is left
    HELLO_SENT = "HELLO_SENT"
    READY = "READY"  # EHLO/HELO accepted, no transaction
    AUTH_SENT = "AUTH_SENT"  # AUTH (RFC 4954) until its final reply
    STARTTLS_SENT = "STARTTLS_SENT"
    AWAITING_TLS = "AWAITING_TLS"  # 220 to STARTTLS: the caller does the handshake now
    TRANSACTION = "TRANSACTION"  # MAIL .. end of data (or the RSET that ends a failed one)
    RSET_SENT = "RSET_SENT"
    QUIT_SENT = "QUIT_SENT"
    CLOSING = "CLOSING"  # the server said 421
    CLOSED = "CLOSED"
    ERROR = "ERROR"


S = ClientState
# The single source of truth for which command may be given in which state.
_ALLOWED: Mapping[str, frozenset[ClientState]] = {
    "ehlo": frozenset({S.GREETED}),
    "starttls": frozenset({S.READY}),
    "tls_established": frozenset({S.AWAITING_TLS}),
    "auth": frozenset({S.READY}),  # RFC 4954 §4: not during a mail transaction
    "send_message": frozenset({S.READY}),
    "rset": frozenset({S.READY}),
    "quit": frozenset({S.GREETED, S.REFUSED, S.READY}),
}


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()


# ---------------------------------------------------------------- extensions (RFC 5321 §4.1.1.1)


@dataclass(frozen=True)
class Extensions:
    """The EHLO keywords (upper case) and their parameters; empty after HELO."""

    keywords: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def parse(cls, reply: ServerReply) -> Extensions:
        keywords: dict[str, tuple[str, ...]] = {}
        for line in reply.lines[1:]:
            words = line.split()
            if not words:
                continue
            keyword, *params = words
            # "AUTH=LOGIN PLAIN" is the pre-RFC 4954 spelling some servers still send.
            if "=" in keyword:
                keyword, first = keyword.split("=", 1)
                params = [first, *params]
            keyword = keyword.upper()
            keywords[keyword] = (*keywords.get(keyword, ()), *params)
        return cls(keywords)

    def __contains__(self, keyword: str) -> bool:
        return keyword.upper() in self.keywords

    @property
    def pipelining(self) -> bool:
        return "PIPELINING" in self.keywords

    @property
    def size(self) -> int | None:
        """RFC 1870: the declared maximum; None when not offered or 0/absent (no fixed limit)."""
        params = self.keywords.get("SIZE")
        if not params or not params[0].isdigit() or int(params[0]) == 0:
            return None
        return int(params[0])

    @property
    def eightbitmime(self) -> bool:
        return "8BITMIME" in self.keywords

    @property
    def smtputf8(self) -> bool:
        return "SMTPUTF8" in self.keywords

    @property
    def chunking(self) -> bool:
        return "CHUNKING" in self.keywords

    @property
    def dsn(self) -> bool:
        return "DSN" in self.keywords

    @property
    def starttls(self) -> bool:
        return "STARTTLS" in self.keywords

    @property
    def enhanced_status_codes(self) -> bool:
        return "ENHANCEDSTATUSCODES" in self.keywords

    @property
    def auth(self) -> frozenset[str]:
        return frozenset(m.upper() for m in self.keywords.get("AUTH", ()))


# ---------------------------------------------------------------- envelope


@dataclass(frozen=True)
class Recipient:
    """A forward-path and its RFC 3461 parameters (sent only when the server offers DSN)."""

    address: str
    notify: tuple[str, ...] = ()  # NEVER, or SUCCESS/FAILURE/DELAY
    orcpt: str | None = None  # "rfc822;user@example.org", already xtext-encoded


@dataclass(frozen=True)
class Envelope:
    sender: str  # "" for the null reverse-path
    recipients: Sequence[Recipient | str]
    body: str | None = None  # "7BIT" or "8BITMIME" (RFC 6152)
    smtputf8: bool = False  # the message needs SMTPUTF8 (RFC 6531)
    ret: str | None = None  # "FULL" or "HDRS" (RFC 3461 §4.3)
    envid: str | None = None  # already xtext-encoded (RFC 3461 §4.4)

    def recipient_list(self) -> tuple[Recipient, ...]:
        return tuple(r if isinstance(r, Recipient) else Recipient(r) for r in self.recipients)


class MessageTooLarge(Exception):
    """The server's SIZE (RFC 1870) is smaller than the message: refused before sending."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"message of {size} octets exceeds the server's SIZE {limit}")
        self.size, self.limit = size, limit


class ExtensionMissing(Exception):
    """The message needs an extension the server did not offer (SMTPUTF8: bounce 5.6.7)."""

    def __init__(self, extension: str) -> None:
        super().__init__(f"the server does not offer {extension}")
        self.extension = extension


# ---------------------------------------------------------------- events


@dataclass(frozen=True)
class Greeting:
    reply: ServerReply

    @property
    def accepted(self) -> bool:
        return self.reply.code == 220


@dataclass(frozen=True)
class HelloDone:
    """The answer to EHLO/LHLO (or to HELO after a 5xx to EHLO)."""

    reply: ServerReply
    extensions: Extensions
    command: str  # "EHLO", "HELO" or "LHLO"

    @property
    def accepted(self) -> bool:
        return self.reply.code // 100 == 2


@dataclass(frozen=True)
class TlsReady:
    reply: ServerReply


@dataclass(frozen=True)
class TlsRefused:
    reply: ServerReply


@dataclass(frozen=True)
class AuthDone:
    """The final reply to AUTH (RFC 4954 §6): 235 is success, anything else a failure. Any
    2xx counts as success (smtp-sink, for one, answers 250)."""

    reply: ServerReply
    mechanism: str

    @property
    def accepted(self) -> bool:
        return self.reply.code // 100 == 2


@dataclass(frozen=True)
class RecipientReply:
    recipient: str
    reply: ServerReply


@dataclass(frozen=True)
class RecipientResult:
    recipient: str
    rcpt_reply: ServerReply | None  # None when MAIL failed and RCPT got no reply of its own
    final: ServerReply  # the reply that decides this recipient's fate

    @property
    def delivered(self) -> bool:
        return self.final.code // 100 == 2


@dataclass(frozen=True)
class TransactionDone:
    mail_reply: ServerReply
    recipients: tuple[RecipientResult, ...]
    data_reply: ServerReply | None  # DATA/BDAT's failing reply, or the SMTP end-of-data reply

    @property
    def delivered(self) -> tuple[str, ...]:
        return tuple(r.recipient for r in self.recipients if r.delivered)


@dataclass(frozen=True)
class ResetDone:
    reply: ServerReply


@dataclass(frozen=True)
class QuitDone:
    reply: ServerReply


@dataclass(frozen=True)
class ServerClosing:
    """A 421: the server is closing the connection (RFC 5321 §3.8). ``answered``: the
    command it came as the reply to ("mail", "data", "data_end", …; "" unsolicited)."""

    reply: ServerReply
    answered: str = ""


@dataclass(frozen=True)
class ConnectionClosed:
    expected: bool  # after QUIT or 421


Event = (
    Greeting
    | HelloDone
    | TlsReady
    | TlsRefused
    | AuthDone
    | RecipientReply
    | TransactionDone
    | ResetDone
    | QuitDone
    | ServerClosing
    | ConnectionClosed
)


# ---------------------------------------------------------------- data framing (RFC 5321 §4.5.2)

_LINE_END = re.compile(rb"\r\n|\r|\n")

# These run on every message sent, so the usual case (a spooled message: CRLF only, short
# lines) is found with counts and splits done in C, and only other messages are rewritten.


def normalize_line_ends(message: bytes) -> bytes:
    """Every line end as CRLF (a bare CR or LF is not a line end SMTP can carry, RFC 5321
    §2.3.8), and a final CRLF."""
    crlf = message.count(b"\r\n")
    if message.count(b"\r") != crlf or message.count(b"\n") != crlf:
        message = _LINE_END.sub(b"\r\n", message)
    if message and not message.endswith(b"\r\n"):
        message += b"\r\n"
    return message


def fold_long_lines(message: bytes, limit: int = LINE_LENGTH_LIMIT) -> bytes:
    """Break the lines of a CRLF-normalised message longer than ``limit`` octets as Postfix's
    ``smtp_line_length_limit`` does (see the module docstring): ``limit`` octets, CRLF, then
    SPACE and up to ``limit - 1`` more, and so on. ``limit`` 0 leaves the message alone."""
    if limit <= 0 or len(message) <= limit:
        return message
    if max(map(len, message.split(b"\r\n"))) <= limit:
        return message
    step = limit - 1  # a continuation piece is SPACE plus this many octets
    out: list[bytes] = []
    for line in message.split(b"\r\n"):
        if len(line) <= limit:
            out.append(line)
            continue
        out.append(line[:limit])
        out.extend(b" " + line[start : start + step] for start in range(limit, len(line), step))
    return b"\r\n".join(out)


def dot_stuff(message: bytes) -> bytes:
    """The DATA payload: CRLF line ends, a '.' doubled at every line start (§4.5.2), and the
    terminating "." line."""
    message = normalize_line_ends(message)
    if message.startswith(b"."):
        message = b"." + message
    # Every line but the first starts after a CRLF once the line ends are normalised.
    return message.replace(b"\r\n.", b"\r\n..") + b".\r\n"


# ---------------------------------------------------------------- the machine


@dataclass
class _Transaction:
    recipients: tuple[Recipient, ...]
    payload: bytes  # CRLF-normalised message (dot-stuffed for DATA)
    mail_reply: ServerReply | None = None
    rcpt_replies: list[ServerReply] = field(default_factory=list)
    final: dict[int, ServerReply] = field(default_factory=dict)  # recipient index -> reply
    data_reply: ServerReply | None = None
    failed: ServerReply | None = None  # DATA / BDAT refused
    chunked: bool = False  # BDAT (RFC 3030) rather than DATA
    chunks: deque[bytes] = field(default_factory=deque)

    @property
    def accepted(self) -> list[int]:
        return [i for i, r in enumerate(self.rcpt_replies) if r.code // 100 == 2]


# What a pending reply answers; the allowed positive classes are checked per kind (4 and 5 are
# always allowed).
_POSITIVE: Mapping[str, tuple[int, ...]] = {
    "greeting": (2,),
    "ehlo": (2,),
    "helo": (2,),
    "starttls": (2,),
    "auth": (2, 3),  # RFC 4954 §4: 334 continues the exchange, 235 ends it
    "mail": (2,),
    "rcpt": (2,),
    "data": (3,),
    "data_end": (2,),
    "bdat": (2,),
    "bdat_last": (2,),
    "rset": (2,),
    "quit": (2,),
}
# Which Timeouts field applies to each awaited reply (the rest: ``command``).
_TIMEOUT_OF = {
    "greeting": "greeting",
    "mail": "mail",
    "rcpt": "rcpt",
    "data": "data_start",
    "data_end": "data_end",
    "bdat": "data_block",
    "bdat_last": "data_end",
}


class SmtpClientConnection:
    """One outbound SMTP or LMTP connection; see the module docstring for the API."""

    def __init__(
        self,
        local_hostname: str,
        *,
        lmtp: bool = False,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        use_chunking: bool = True,
        timeouts: Timeouts = TIMEOUTS,
        line_length_limit: int = LINE_LENGTH_LIMIT,
    ) -> None:
        self.local_hostname = local_hostname
        self.lmtp = lmtp
        self.timeouts = timeouts
        self.line_length_limit = line_length_limit  # 0: lines go out as they are
        self.authenticated = False
        self.use_chunking = use_chunking  # False: DATA even when CHUNKING is offered
        self.chunk_size = chunk_size
        self.state = ClientState.CONNECTED
        self.extensions = Extensions()
        self._parser = ReplyParser()
        self._replies: deque[ServerReply] = deque()
        self._pending: deque[str] = deque(["greeting"])
        self._events: deque[Event] = deque()
        self._outgoing: list[bytes] = []
        self._txn: _Transaction | None = None
        self._auth_mechanism = ""
        self._auth_responses: deque[bytes] = deque()  # what each 334 gets, in order
        self._eof = False
        self._close_reported = False
        self._error: RemoteProtocolError | None = None

    # ------------------------------------------------------------ I/O side

    def receive_data(self, data: bytes) -> None:
        """Bytes from the peer; ``b""`` once it has closed the connection."""
        if self._eof:
            raise LocalProtocolError("data received after end of file", self.state.value)
        if not data:
            self._eof = True
            return
        if self.state is ClientState.AWAITING_TLS:
            # RFC 3207 §5 / CVE-2011-0411: plaintext after the 220 would be read as if it came
            # over TLS; a well-behaved server sends nothing until the handshake.
            self._fail(RemoteProtocolError("data after the 220 to STARTTLS", data))
            return
        if self._error is not None:
            return
        try:
            self._replies.extend(self._parser.feed(data))
        except ReplyError as error:
            self._replies.extend(error.complete)
            self._error = error

    def data_to_send(self) -> bytes:
        """The bytes the commands given so far produced (empty when there is nothing to send)."""
        out, self._outgoing = b"".join(self._outgoing), []
        return out

    def next_event(self) -> Event | _NeedData:
        """The next event, NEED_DATA when more bytes are needed; raises RemoteProtocolError."""
        while not self._events:
            if self.state is ClientState.ERROR:
                assert self._error is not None
                raise self._error
            if self._replies:
                self._handle(self._replies.popleft())
            elif self._error is not None:
                self._fail(self._error)
            elif self._eof and not self._close_reported:
                self._closed()
            else:
                return NEED_DATA
        return self._events.popleft()

    def current_timeout(self) -> float | None:
        """The RFC 5321 §4.5.3.2 timeout for the reply awaited now; None when none is due."""
        if not self._pending:
            return None
        return getattr(self.timeouts, _TIMEOUT_OF.get(self._pending[0], "command"))

    @property
    def awaiting(self) -> str | None:
        """The reply awaited now (``"greeting"``, ``"ehlo"``, ``"mail"``, ``"data_end"``, ...)."""
        return self._pending[0] if self._pending else None

    # ------------------------------------------------------------ commands

    def ehlo(self) -> None:
        self._check("ehlo")
        verb = "LHLO" if self.lmtp else "EHLO"
        self._send(f"{verb} {self.local_hostname}\r\n".encode(), "ehlo")
        self.state = ClientState.HELLO_SENT

    def starttls(self) -> None:
        self._check("starttls")
        if not self.extensions.starttls:
            raise LocalProtocolError("STARTTLS was not offered", self.state.value)
        self._send(b"STARTTLS\r\n", "starttls")
        self.state = ClientState.STARTTLS_SENT

    def tls_established(self) -> None:
        """The TLS handshake is done: forget the extensions, EHLO again (RFC 3207 §4.2)."""
        self._check("tls_established")
        self.extensions = Extensions()
        self.state = ClientState.GREETED

    def auth(self, mechanism: str, username: str, password: str) -> None:
        """AUTH PLAIN or LOGIN (RFC 4954 §4); :class:`AuthDone` carries the outcome."""
        self._check("auth")
        mechanism = mechanism.upper()
        if self.authenticated:
            raise LocalProtocolError("already authenticated (RFC 4954 §4)", self.state.value)
        if mechanism not in self.extensions.auth:
            raise LocalProtocolError(f"AUTH {mechanism} was not offered", self.state.value)
        user, secret = username.encode("utf-8"), password.encode("utf-8")
        if mechanism == "PLAIN":
            # RFC 4616 §2: [authzid] NUL authcid NUL passwd; a NUL inside either breaks it.
            if b"\0" in user or b"\0" in secret:
                raise LocalProtocolError("NUL in the AUTH PLAIN credentials", self.state.value)
            line = b"AUTH PLAIN " + base64.b64encode(b"\0" + user + b"\0" + secret) + b"\r\n"
            responses: list[bytes] = []
        elif mechanism == "LOGIN":
            line = b"AUTH LOGIN\r\n"
            responses = [base64.b64encode(user) + b"\r\n", base64.b64encode(secret) + b"\r\n"]
        else:
            raise LocalProtocolError(f"AUTH {mechanism} is not implemented", self.state.value)
        self._auth_mechanism = mechanism
        self._auth_responses = deque(responses)
        self._send(line, "auth")
        self.state = ClientState.AUTH_SENT

    def send_message(self, envelope: Envelope, message: bytes) -> None:
        self._check("send_message")
        recipients = envelope.recipient_list()
        if not recipients:
            raise LocalProtocolError("a transaction needs at least one recipient", "READY")
        ext = self.extensions
        if envelope.smtputf8 and not ext.smtputf8:
            raise ExtensionMissing("SMTPUTF8")
        normalized = normalize_line_ends(message)
        if not ext.eightbitmime and not normalized.isascii():
            # RFC 6152 §3: 8-bit data for a server without 8BITMIME is converted (as
            # Postfix does); what cannot be converted goes as it is (seven_bit's docstring).
            normalized = to_seven_bit(normalized) or normalized
        normalized = fold_long_lines(normalized, self.line_length_limit)
        limit = ext.size
        if limit is not None and len(normalized) > limit:
            raise MessageTooLarge(len(normalized), limit)
        chunking = ext.chunking and self.use_chunking
        payload = normalized if chunking else dot_stuff(normalized)
        txn = self._txn = _Transaction(recipients, payload, chunked=chunking)
        self.state = ClientState.TRANSACTION
        self._send(self._mail_command(envelope, len(normalized)), "mail")
        # Without PIPELINING every command waits for the previous reply (RFC 5321 §4.1).
        if ext.pipelining:
            for recipient in recipients:
                self._send(self._rcpt_command(recipient), "rcpt")
            if not chunking:
                self._send(b"DATA\r\n", "data")  # last in the group (RFC 2920 §3.1)
        if chunking:
            txn.chunks = deque(_chunks(normalized, self.chunk_size))

    def rset(self) -> None:
        self._check("rset")
        self._send(b"RSET\r\n", "rset")
        self.state = ClientState.RSET_SENT

    def quit(self) -> None:
        self._check("quit")
        self._send(b"QUIT\r\n", "quit")
        self.state = ClientState.QUIT_SENT

    # ------------------------------------------------------------ command text

    def _mail_command(self, envelope: Envelope, size: int) -> bytes:
        ext = self.extensions
        params = []
        if "SIZE" in ext:
            params.append(f"SIZE={size}")  # RFC 1870 §6
        if envelope.body and ext.eightbitmime:
            params.append(f"BODY={envelope.body}")  # RFC 6152
        if envelope.smtputf8:
            params.append("SMTPUTF8")  # RFC 6531 §3.4
        if ext.dsn:
            if envelope.ret:
                params.append(f"RET={envelope.ret}")
            if envelope.envid:
                params.append(f"ENVID={envelope.envid}")
        return _command("MAIL FROM:", envelope.sender, params)

    def _rcpt_command(self, recipient: Recipient) -> bytes:
        params = []
        if self.extensions.dsn:
            if recipient.notify:
                params.append("NOTIFY=" + ",".join(recipient.notify))
            if recipient.orcpt:
                params.append(f"ORCPT={recipient.orcpt}")
        return _command("RCPT TO:", recipient.address, params)

    # ------------------------------------------------------------ replies

    def _handle(self, reply: ServerReply) -> None:
        if not self._pending:
            self._fail(RemoteProtocolError("reply nobody asked for", reply.raw))
            return
        kind = self._pending.popleft()
        digit = reply.code // 100
        if digit not in _POSITIVE[kind] and digit not in (4, 5):
            message = f"reply code {reply.code} is not an answer to {kind}"
            self._fail(RemoteProtocolError(message, reply.raw))
            return
        if reply.code == 421 and kind != "quit":
            self._server_closing(kind, reply)
            return
        getattr(self, f"_on_{kind}")(reply)

    def _on_greeting(self, reply: ServerReply) -> None:
        self.state = ClientState.GREETED if reply.code == 220 else ClientState.REFUSED
        self._events.append(Greeting(reply))

    def _on_ehlo(self, reply: ServerReply) -> None:
        if reply.code // 100 == 2:
            self.extensions = Extensions.parse(reply)
            self.state = ClientState.READY
            self._events.append(HelloDone(reply, self.extensions, "LHLO" if self.lmtp else "EHLO"))
        elif reply.code >= 500 and not self.lmtp:
            # RFC 5321 §3.2: a server that does not know EHLO answers 5xx; HELO then.
            self._send(f"HELO {self.local_hostname}\r\n".encode(), "helo")
        else:
            self.state = ClientState.GREETED
            self._events.append(HelloDone(reply, Extensions(), "LHLO" if self.lmtp else "EHLO"))

    def _on_helo(self, reply: ServerReply) -> None:
        self.extensions = Extensions()
        self.state = ClientState.READY if reply.code // 100 == 2 else ClientState.GREETED
        self._events.append(HelloDone(reply, self.extensions, "HELO"))

    def _on_starttls(self, reply: ServerReply) -> None:
        if reply.code == 220:
            if not self._parser.empty or self._replies:
                self._fail(RemoteProtocolError("data after the 220 to STARTTLS", reply.raw))
                return
            self.state = ClientState.AWAITING_TLS
            self._events.append(TlsReady(reply))
        else:
            self.state = ClientState.READY
            self._events.append(TlsRefused(reply))

    def _on_auth(self, reply: ServerReply) -> None:
        if reply.code == 334:
            # The next response; "*" cancels a challenge the mechanism cannot answer (§4).
            if self._auth_responses:
                self._send(self._auth_responses.popleft(), "auth")
            else:
                self._send(b"*\r\n", "auth")
            return
        self._auth_responses.clear()
        self.authenticated = reply.code // 100 == 2
        self.state = ClientState.READY
        self._events.append(AuthDone(reply, self._auth_mechanism))

    def _on_mail(self, reply: ServerReply) -> None:
        txn = self._txn
        assert txn is not None
        txn.mail_reply = reply
        if reply.code // 100 != 2 and not self.extensions.pipelining:
            self._finish()  # nothing else was sent; no transaction is open
        elif not self.extensions.pipelining:
            self._send(self._rcpt_command(txn.recipients[0]), "rcpt")

    def _on_rcpt(self, reply: ServerReply) -> None:
        txn = self._txn
        assert txn is not None
        index = len(txn.rcpt_replies)
        txn.rcpt_replies.append(reply)
        # A refused MAIL makes every RCPT of the group fail (503); the MAIL reply is the reason.
        mail_ok = txn.mail_reply is not None and txn.mail_reply.code // 100 == 2
        if mail_ok:
            self._events.append(RecipientReply(txn.recipients[index].address, reply))
        if index + 1 < len(txn.recipients):
            if not self.extensions.pipelining:
                self._send(self._rcpt_command(txn.recipients[index + 1]), "rcpt")
            return
        if self.extensions.pipelining and not txn.chunked:
            return  # DATA's reply is next
        if not mail_ok:
            self._finish()
        elif not txn.accepted:
            self._reset_then_finish()
        elif txn.chunks:
            self._send_chunk()
        else:
            self._send(b"DATA\r\n", "data")

    def _on_data(self, reply: ServerReply) -> None:
        txn = self._txn
        assert txn is not None
        mail_ok = txn.mail_reply is not None and txn.mail_reply.code // 100 == 2
        if reply.code == 354:
            if txn.accepted:
                self._send_data(txn.payload, ["data_end"] * self._end_replies())
            else:
                # RFC 2920 §3.1: DATA accepted with no recipient: end it with an empty message.
                txn.failed = reply
                self._send_data(b".\r\n", ["data_end"])
            return
        txn.failed = txn.data_reply = reply
        if mail_ok:
            self._reset_then_finish()
        else:
            self._finish()

    def _on_data_end(self, reply: ServerReply) -> None:
        self._end_reply(reply)

    def _on_bdat(self, reply: ServerReply) -> None:
        txn = self._txn
        assert txn is not None
        if reply.code // 100 != 2:
            # RFC 3030 §4.2: a refused chunk fails the transaction; no more chunks, then RSET.
            txn.failed = txn.data_reply = reply
            self._reset_then_finish()
            return
        self._send_chunk()

    def _on_bdat_last(self, reply: ServerReply) -> None:
        if not self.lmtp and reply.code // 100 != 2:
            self._on_bdat(reply)  # a refused last chunk too leaves a transaction to RSET
            return
        self._end_reply(reply)

    def _on_rset(self, reply: ServerReply) -> None:
        if reply.code // 100 != 2:
            self._fail(RemoteProtocolError(f"RSET answered {reply.code}", reply.raw))
            return
        if self._txn is not None:
            self._finish()
        else:
            self.state = ClientState.READY
            self._events.append(ResetDone(reply))

    def _on_quit(self, reply: ServerReply) -> None:
        self._events.append(QuitDone(reply))

    # ------------------------------------------------------------ transaction steps

    def _end_replies(self) -> int:
        """How many replies the end of the data gets: one, or one per accepted recipient in
        LMTP (RFC 2033 §4.2)."""
        assert self._txn is not None
        return len(self._txn.accepted) if self.lmtp else 1

    def _send_data(self, data: bytes, expect: list[str]) -> None:
        self._outgoing.append(data)
        self._pending.extend(expect)

    def _send_chunk(self) -> None:
        txn = self._txn
        assert txn is not None
        chunk = txn.chunks.popleft()
        if txn.chunks:
            self._send_data(b"BDAT %d\r\n" % len(chunk) + chunk, ["bdat"])
        else:
            last = b"BDAT %d LAST\r\n" % len(chunk) + chunk
            self._send_data(last, ["bdat_last"] * self._end_replies())

    def _end_reply(self, reply: ServerReply) -> None:
        txn = self._txn
        assert txn is not None
        if txn.failed is not None:  # the empty message of RFC 2920 §3.1
            self._finish()
            return
        accepted = txn.accepted
        if self.lmtp:
            txn.final[accepted[len(txn.final)]] = reply
            if len(txn.final) < len(accepted):
                return
        else:
            txn.data_reply = reply
            txn.final = dict.fromkeys(accepted, reply)
        self._finish()

    def _reset_then_finish(self) -> None:
        # The MAIL still stands on the server (e.g. Postfix after "554 no valid recipients"):
        # RSET closes it so the connection can carry the next message (RFC 5321 §4.1.1.5).
        self._send(b"RSET\r\n", "rset")

    def _finish(self) -> None:
        txn = self._txn
        assert txn is not None and txn.mail_reply is not None
        self._txn = None
        self.state = ClientState.READY
        results = []
        for index, recipient in enumerate(txn.recipients):
            rcpt = txn.rcpt_replies[index] if index < len(txn.rcpt_replies) else None
            final = txn.final.get(index)
            if final is None:
                if txn.mail_reply.code // 100 != 2:
                    final = txn.mail_reply
                elif rcpt is not None and rcpt.code // 100 != 2:
                    final = rcpt
                else:
                    final = txn.failed or txn.mail_reply
            results.append(RecipientResult(recipient.address, rcpt, final))
        self._events.append(TransactionDone(txn.mail_reply, tuple(results), txn.data_reply))

    def _server_closing(self, kind: str, reply: ServerReply) -> None:
        """421 (RFC 5321 §3.8): the answer to everything still waiting; the server hangs up."""
        self._pending.clear()
        txn = self._txn
        if txn is not None:
            if txn.mail_reply is None:
                txn.mail_reply = reply
            if kind in ("rcpt",) and len(txn.rcpt_replies) < len(txn.recipients):
                txn.rcpt_replies.append(reply)
            txn.final.update((i, reply) for i in range(len(txn.recipients)) if i not in txn.final)
            txn.failed = txn.failed or reply
            self._finish()
        self.state = ClientState.CLOSING
        self._events.append(ServerClosing(reply, kind))

    # ------------------------------------------------------------ plumbing

    def _check(self, command: str) -> None:
        if self.state not in _ALLOWED[command]:
            raise LocalProtocolError(f"{command}() is not allowed now", self.state.value)

    def _send(self, line: bytes, expect: str) -> None:
        self._outgoing.append(line)
        self._pending.append(expect)

    def _closed(self) -> None:
        try:
            self._parser.eof()
        except ReplyError as error:
            self._fail(error)
            return
        if self._pending and self._pending != deque(["quit"]):
            waiting = self._pending[0]
            self._fail(RemoteProtocolError(f"connection closed while waiting for {waiting}"))
            return
        expected = self.state in (ClientState.QUIT_SENT, ClientState.CLOSING)
        self.state = ClientState.CLOSED
        self._events.append(ConnectionClosed(expected))
        self._close_reported = True

    def _fail(self, error: RemoteProtocolError) -> None:
        self._error = error
        self.state = ClientState.ERROR
        self._pending.clear()


def _command(verb: str, address: str, params: Iterable[str]) -> bytes:
    text = f"{verb}<{address}>"
    for param in params:
        text += " " + param
    if "\r" in text or "\n" in text:
        raise LocalProtocolError(f"line end inside a command: {text!r}")
    return text.encode("utf-8") + b"\r\n"


def _chunks(data: bytes, size: int) -> Iterable[bytes]:
    if not data:
        yield b""
        return
    for start in range(0, len(data), size):
        yield data[start : start + size]
