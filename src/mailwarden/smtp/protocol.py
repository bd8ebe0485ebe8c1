"""The sans-I/O SMTP server state machine (RFC 5321 with the extensions Mailwarden offers).

Bytes go in with :meth:`SmtpConnection.receive_data`; events come out of
:meth:`SmtpConnection.next_event`; replies go in with :meth:`accept` or :meth:`send_reply`;
bytes to write come out of :meth:`data_to_send`. Nothing here touches a socket, a clock or a
file, so every rule below is tested by feeding bytes, whole or one at a time.

The core answers by itself whatever needs no decision (syntax errors, bad sequences, limits,
NOOP, RSET, HELP, QUIT) and pauses on each event that needs the server's decision, so that with
PIPELINING (RFC 2920) replies always come back in command order.

Layout (after h11: the transitions are the single source of truth): ``states.py`` holds the
states and the tables of which command each state allows (or the out-of-order reply) and how
replies and the core's own moves change the state; ``framing.py`` holds the readers that cut
the input into command lines, DATA content and BDAT chunks. This module dispatches: it reads
a unit with the reader of the current state, looks the command up in the table, and runs the
handler, which checks the command's syntax and never its order.
"""

from __future__ import annotations

import base64
import binascii
import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from mailwarden.smtp import events, replies
from mailwarden.smtp.address import (
    AddressError,
    Limits,
    Path,
    is_valid_helo_argument,
    mail_parameters,
    parse_path,
    parse_xtext,
)
from mailwarden.smtp.errors import LocalProtocolError
from mailwarden.smtp.framing import (
    END_OF_DATA,
    LINE_HOLD,
    BdatReader,
    CommandLineReader,
    ContentCheck,
    DataReader,
)
from mailwarden.smtp.replies import Reply
from mailwarden.smtp.states import (
    AFTER_REPLY,
    ALLOWED,
    COMMAND_STATES,
    TRANSITIONS,
    VERBS,
    Move,
    Outcome,
    State,
    outcome_of,
)


class Paused(enum.Enum):
    """What :meth:`SmtpConnection.next_event` returns when it has no event to give."""

    NEED_DATA = "need-data"  # feed more bytes
    AWAITING_REPLY = "awaiting-reply"  # answer the last event first
    AWAITING_TLS = "awaiting-tls"  # finish the TLS handshake first
    CLOSED = "closed"  # the session is over


NEED_DATA = Paused.NEED_DATA
AWAITING_REPLY = Paused.AWAITING_REPLY
AWAITING_TLS = Paused.AWAITING_TLS
CLOSED = Paused.CLOSED


class BareLineEndings(enum.StrEnum):
    """What to do with a bare CR or LF inside DATA (the SMTP smuggling vector)."""

    REJECT = "reject"  # refuse the message at end of data (default)
    KEEP = "keep"  # keep it as data; it is never an end-of-data marker either way


@dataclass(frozen=True, slots=True)
class ProtocolSettings:
    """Everything the core needs to know about its listener. Limits from RFC 5321 §4.5.3."""

    hostname: str = "localhost"
    max_command_line: int = 512
    # RFC 5321 §4.5.3.1.6 allows text lines of 1000 octets (CRLF included) but §4.5.3.1 asks
    # servers to avoid such limits where they can, and real senders (HTML generators, unfolded
    # base64) exceed it daily: a longer line is data like any other unless the listener opts
    # in to refusing it.
    max_text_line: int = 1000
    strict_line_length: bool = False
    address_limits: Limits = field(default_factory=Limits)
    max_recipients: int = 1000
    max_message_size: int = 50 * 1024 * 1024
    max_errors: int = 10
    bare_line_endings: BareLineEndings = BareLineEndings.REJECT
    reject_early_talkers: bool = True
    tls_available: bool = False
    auth_mechanisms: tuple[str, ...] = ("PLAIN", "LOGIN")
    auth_requires_tls: bool = True
    # Mechanisms that send no secret in clear (a script's ``safe_in_clear``): offered before
    # TLS even when auth_requires_tls (RFC 4954 §4 leaves which ones to the server).
    auth_clear_mechanisms: frozenset[str] = frozenset()
    max_auth_failures: int = 3
    # A listener with tls_client_certificate = "require": nothing but the commands that lead
    # to TLS before the handshake (RFC 3207 §4), so a client that never starts TLS cannot
    # pass without the certificate the session then checks.
    tls_required: bool = False


# MAIL and RCPT lines grow with each extension's parameters (RFC 1870 §3, RFC 3461 §5, RFC 4954
# §5); keep the plain limit for other commands and allow this much more for these two.
_PARAMETER_ALLOWANCE = 512
_MAIL_PARAMETERS = frozenset({"SIZE", "BODY", "SMTPUTF8", "RET", "ENVID", "AUTH"})
_RCPT_PARAMETERS = frozenset({"NOTIFY", "ORCPT"})
# RFC 4954 §4: AUTH lines (command with initial response, or an answer) up to 12288 octets.
_AUTH_LINE_LIMIT = 12288
# RFC 3207 §4: a server that requires TLS answers every other command with 530 until then.
_BEFORE_TLS = frozenset({"NOOP", "EHLO", "STARTTLS", "QUIT"})


class _Handled(enum.Enum):
    HANDLED = "handled"


HANDLED = _Handled.HANDLED


class SmtpConnection:
    """One SMTP session, server side, as a pure state machine.

    Which command may come when is read from :data:`states.ALLOWED`; how replies and the
    core's own moves change the state, from :data:`states.AFTER_REPLY` and
    :data:`states.TRANSITIONS`. Framing is done by the readers of :mod:`framing`.

    Failure behaviour: peer errors never raise; they become replies (with enhanced codes) and,
    past ``max_errors``, a 421 and ``ConnectionClosing``. Calling a method out of turn (say,
    ``send_reply`` with no event awaiting a reply) is a bug in the caller and raises
    :class:`LocalProtocolError` (a ``RuntimeError``) naming the state.
    """

    def __init__(
        self, settings: ProtocolSettings, reply_tally: dict[int, int] | None = None
    ) -> None:
        self.settings = settings
        # Replies sent, by code: the caller's mapping (the worker's metrics) or our own. Counting
        # here, where every reply is encoded, misses none, the core's own 500s and 421s included.
        self.reply_tally: dict[int, int] = {} if reply_tally is None else reply_tally
        self._state = State.BEFORE_GREETING
        self._inbuf = bytearray()
        self._outbuf = bytearray()
        self._pending: list[events.Event] = []
        self._awaiting: events.Event | None = None
        self._eof = False
        self._lines = CommandLineReader(
            max(settings.max_command_line + _PARAMETER_ALLOWANCE, _AUTH_LINE_LIMIT)
        )
        self._line_hold = max(min(settings.max_text_line, LINE_HOLD), 1)
        self._strict_limit = settings.max_text_line - 2 if settings.strict_line_length else None
        self._reject_bare = settings.bare_line_endings is BareLineEndings.REJECT
        # The BDAT chunk being read, the refusal to send once a refused one has been read
        # and thrown away (RFC 3030 §2), and the state to return to after that.
        self._chunk: BdatReader | None = None
        self._chunk_refusal: Reply | None = None
        self._chunk_return = State.READY
        self.errors = 0
        self.auth_failures = 0
        self.tls_active = False
        # Set by the caller after the handshake: the client's certificate verified, so
        # EXTERNAL (RFC 4422 appendix A) has something to stand on and is offered.
        self.client_certificate_verified = False
        self.authenticated = False
        self.helo_name: str | None = None
        self.extended = False
        self._reset_transaction()

    # --- transaction state -------------------------------------------------------------------

    def _reset_transaction(self) -> None:
        self.mail_from: Path | None = None
        self.recipient_count = 0
        self.utf8_transaction = False
        self._content: ContentCheck | None = None  # set while a message is open
        self._data: DataReader | None = None

    def _open_message(self, chunking: bool) -> ContentCheck:
        s = self.settings
        content = ContentCheck(s.max_message_size, self._reject_bare, self._strict_limit)
        self._content = content
        self._pending.append(events.MessageStart(chunking=chunking))
        return content

    @property
    def state(self) -> State:
        """Where the session is (see :class:`states.State`)."""
        return self._state

    @property
    def _message_open(self) -> bool:
        return self._content is not None

    @property
    def in_transaction(self) -> bool:
        return self.mail_from is not None

    @property
    def closed(self) -> bool:
        return self._state is State.CLOSED

    @property
    def awaiting(self) -> events.Event | None:
        """The event whose reply the core is waiting for, if any."""
        return self._awaiting

    @property
    def buffered_bytes(self) -> int:
        """Input received but not yet processed (the server pauses reading above a mark)."""
        return len(self._inbuf)

    @property
    def in_data(self) -> bool:
        """True while reading message content (the server applies its data timeout)."""
        return self._state is State.DATA or self._state is State.BDAT

    # --- state moves -----------------------------------------------------------------------------

    def _move(self, move: Move) -> None:
        """Take one of the core's own moves, as :data:`states.TRANSITIONS` allows it."""
        next_state = TRANSITIONS.get((self._state, move))
        if next_state is None:
            raise LocalProtocolError(f"no move {move.value!r} from here", self._state)
        self._state = next_state

    # --- output --------------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """Bytes to write to the client now (possibly empty)."""
        if not self._outbuf:
            return b""
        out = bytes(self._outbuf)
        self._outbuf.clear()
        return out

    def _reply(self, reply: Reply) -> None:
        tally = self.reply_tally
        tally[reply.code] = tally.get(reply.code, 0) + 1
        self._outbuf += reply.encode()

    def _close(self, reply: Reply | None, reason: str) -> None:
        """End the session from any state (the one move not in the tables: every state may)."""
        if reply is not None:
            self._reply(reply)
        if self._message_open and self._awaiting.__class__ is not events.MessageComplete:
            # A message cut off by the close (client EOF, timeout, shutdown) must never be
            # queued: tell the server to discard what it stored (RFC 5321 §4.1.1.4, the
            # message is only accepted at end of data).
            self._pending.append(events.MessageAborted(f"connection closed: {reason}"))
            self._reset_transaction()
        self._state = State.CLOSED
        self._inbuf.clear()
        self._pending.append(events.ConnectionClosing(reason))

    def _error(self, reply: Reply) -> None:
        """A peer error: answer it, and hang up once the client has made too many (§4.5.3)."""
        self.errors += 1
        self._reply(reply)
        if self.errors >= self.settings.max_errors:
            self._close(replies.TOO_MANY_ERRORS, "too many errors")

    # --- greeting and connection-level calls from the server ---------------------------------

    def send_greeting(self, reply: Reply) -> None:
        """Send the 220 greeting, or a 421/554 refusal chosen by the connect policy."""
        if self._state is State.CLOSED:
            return  # the client left while the connect policy ran: nothing to greet
        if self._state is not State.BEFORE_GREETING:
            raise LocalProtocolError("greeting already sent", self._state)
        if self._inbuf and self.settings.reject_early_talkers:
            self._close(replies.EARLY_TALKER, "client talked before the greeting")
            return
        self._reply(reply)
        if reply.code == 220:
            self._move(Move.GREETING_220)
        elif reply.code == 554:
            self._move(Move.GREETING_554)
        else:
            self._close(None, f"connection refused with {reply.code}")

    def close_with(self, reply: Reply, reason: str) -> None:
        """Server-initiated end: timeouts, shutdown, per-IP limits. Sends ``reply`` and closes."""
        if self._state is not State.CLOSED:
            self._close(reply, reason)

    def tls_established(self) -> None:
        """The TLS handshake after STARTTLS succeeded: the session starts afresh (RFC 3207 §4.2)."""
        if self._state is not State.AWAITING_TLS:
            raise LocalProtocolError("tls_established() without STARTTLS", self._state)
        self.tls_active = True
        self.helo_name = None
        self.extended = False
        self._reset_transaction()
        self._inbuf.clear()
        self._move(Move.TLS_ESTABLISHED)

    def tls_before_greeting(self) -> None:
        """The listener is implicit TLS (RFC 8314 §3.3): the handshake came before the greeting,
        so the whole session is under TLS and STARTTLS is refused as already active."""
        if self._state is not State.BEFORE_GREETING:
            raise LocalProtocolError("tls_before_greeting() after the greeting", self._state)
        self.tls_active = True

    # --- input ---------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Add bytes received from the client. Empty bytes mean the client closed its sending
        side (EOF): commands it pipelined before that are still answered, then the session
        closes (a client may send a whole transaction and QUIT, then shut down writing)."""
        state = self._state
        if state is State.CLOSED:
            return
        if not data:
            self._eof = True
            if state is State.BEFORE_GREETING or state is State.AWAITING_TLS:
                self._close(None, "client closed the connection")
            return
        if state is State.AWAITING_TLS:
            # RFC 3207 §4.2 / CVE-2011-0411: plaintext pipelined after STARTTLS is discarded.
            return
        if state is State.BEFORE_GREETING and self.settings.reject_early_talkers:
            # Nothing is parsed before the greeting; send_greeting only needs to know that
            # something came, so keep one byte and let memory stay bounded.
            if not self._inbuf:
                self._inbuf += data[:1]
            return
        self._inbuf += data

    def next_event(self) -> events.Event | Paused:
        """The next event, or why there is none. Call until it returns a ``Paused`` value."""
        while True:
            if self._pending:
                return self._pending.pop(0)
            if self._awaiting is not None and self._state is not State.CLOSED:
                return AWAITING_REPLY
            step = _STEPS.get(self._state)
            if step is None:
                return _PAUSED_IN[self._state]
            if not step(self):
                if self._pending:
                    return self._pending.pop(0)
                if self._eof:
                    self._close(None, "client closed the connection")
                    continue
                return NEED_DATA

    def connection_lost(self) -> None:
        """The connection is gone in both directions: close now, answer nothing more."""
        if self._state is not State.CLOSED:
            self._close(None, "connection lost")

    def _take_line(self) -> bytes | _Handled | None:
        """One command line without its CRLF, None if incomplete, HANDLED if already answered.

        The line limits of RFC 5321 §4.5.3.1.4 (and RFC 4954 §4 for AUTH) are the reader's.
        """
        line = self._lines.read(self._inbuf)
        if line is None or line.__class__ is bytes:
            return line  # type: ignore[return-value]
        self._error(line)  # type: ignore[arg-type]
        return HANDLED

    # --- one unit of work per state (each returns False when more bytes are needed) ----------

    def _step_command(self) -> bool:
        line = self._take_line()
        if line is None:
            return False
        if line is not HANDLED:
            self._handle_command_line(line)  # type: ignore[arg-type]
        return True

    def _step_rejecting(self) -> bool:
        line = self._take_line()
        if line is None:
            return False
        if line is HANDLED:
            return True
        if line.strip().upper() == b"QUIT":  # type: ignore[union-attr]
            self._close(replies.CLOSING, "client quit")
        else:
            self._reply(replies.BAD_SEQUENCE)
        return True

    def _step_auth(self) -> bool:
        line = self._take_line()
        if line is None:
            return False
        if line is HANDLED:
            return True  # a malformed line was answered; the challenge still stands
        text = line.strip(b" ")  # type: ignore[union-attr]
        if text == b"*":
            self._move(Move.AUTH_CANCELLED)
            self._error(replies.AUTH_CANCELLED)  # RFC 4954 §4: the client cancelled
            return True
        decoded = _decode_base64(text.decode("ascii", "replace"))
        if decoded is None:
            self._move(Move.AUTH_CANCELLED)
            self._error(replies.AUTH_BAD_BASE64)
            return True
        self._await(events.AuthResponse(decoded))
        return True

    def _step_data(self) -> bool:
        item = self._data.read(self._inbuf)  # type: ignore[union-attr]
        if item is None:
            return False
        if item is END_OF_DATA:
            self._finish_message()
        else:
            self._emit_content(item)  # type: ignore[arg-type]
        return True

    def _step_bdat(self) -> bool:
        chunk = self._chunk
        piece = chunk.read(self._inbuf)  # type: ignore[union-attr]
        if piece is not None:
            if self._chunk_refusal is None:
                self._emit_content(piece)
            if chunk.remaining:  # type: ignore[union-attr]
                return True
        elif chunk.remaining:  # type: ignore[union-attr]
            return False
        # The whole chunk has been read.
        self._chunk = None
        refusal = self._chunk_refusal
        if refusal is not None:
            self._chunk_refusal = None
            self._state = self._chunk_return  # thrown away: back where the BDAT found us
            self._error(refusal)
        elif chunk.last:  # type: ignore[union-attr]
            self._finish_message()
        elif self._content.error is not None:  # type: ignore[union-attr]
            self._abort_message()
        else:
            self._move(Move.CHUNK_READ)
            size = self._content.size  # type: ignore[union-attr]
            self._reply(replies.BDAT_CHUNK_OK.with_text(f"{size} octets received"))
        return True

    # --- replies from the server ---------------------------------------------------------------

    def accept(self) -> None:
        """Answer the awaited event with its default positive reply."""
        default = _DEFAULT_REPLY.get(self._awaiting.__class__)
        if default is None:
            raise LocalProtocolError("accept() with no event awaiting a reply", self._state)
        self.send_reply(default(self, self._awaiting))

    def send_reply(self, reply: Reply, *, disconnect: bool = False) -> None:
        """Answer the awaited event. A positive reply moves the session on; ``disconnect`` or a
        421 closes it after this reply (RFC 5321 §3.8)."""
        event = self._awaiting
        if event is None:
            raise LocalProtocolError("send_reply() with no event awaiting a reply", self._state)
        self._awaiting = None
        outcome = outcome_of(reply)
        kind = event.__class__
        answered = _ANSWERED.get(kind)
        if answered is not None and answered(self, event, reply, outcome):
            return  # the answer closed the session
        next_state = AFTER_REPLY[kind][self._state].get(outcome)
        if next_state is not None:
            self._state = next_state
        self._reply(reply)
        if disconnect or reply.code == 421:
            self._close(None, f"server closed after {reply.code}")

    def _helo_answered(self, event: events.Helo, reply: Reply, outcome: Outcome) -> bool:
        if outcome is Outcome.ACCEPTED:
            # RFC 5321 §4.1.4: only an EHLO/HELO the server accepts clears the transaction
            # "as if RSET"; a refused one leaves it as it was.
            if self.in_transaction or self._message_open:
                self._pending.append(events.TransactionReset())
            self._reset_transaction()
            self.helo_name = event.name
            self.extended = event.extended
        return False

    def _mail_answered(self, event: events.MailFrom, reply: Reply, outcome: Outcome) -> bool:
        if outcome is Outcome.ACCEPTED:
            self.mail_from = event.path
            self.utf8_transaction = "SMTPUTF8" in event.path.parameters
        return False

    def _rcpt_answered(self, event: events.RcptTo, reply: Reply, outcome: Outcome) -> bool:
        if outcome is Outcome.ACCEPTED:
            self.recipient_count += 1
        return False

    def _message_answered(self, event: events.Event, reply: Reply, outcome: Outcome) -> bool:
        self._reset_transaction()
        return False

    def _auth_answered(self, event: events.Event, reply: Reply, outcome: Outcome) -> bool:
        if outcome is Outcome.ACCEPTED:
            self.authenticated = True
        elif reply.code == 535:
            self.auth_failures += 1
            if self.auth_failures >= self.settings.max_auth_failures:
                self._reply(reply)
                self._close(replies.AUTH_TOO_MANY_FAILURES, "too many AUTH failures")
                return True
        return False

    def send_auth_challenge(self, challenge: bytes) -> None:
        """Answer an AUTH event with a 334 challenge (RFC 4954 §4); the next line is the answer."""
        encoded = base64.b64encode(challenge).decode("ascii")
        self.send_reply(Reply(334, "", encoded))

    def auth_failure_delay(self) -> float:
        """Seconds to wait before answering a failed AUTH: grows with each failure."""
        return min(2.0**self.auth_failures, 8.0) if self.auth_failures else 0.0

    # --- capabilities --------------------------------------------------------------------------

    def ehlo_keywords(self) -> list[str]:
        """The EHLO advertisement: an optional command is advertised exactly when the
        ``offered`` check the dispatcher applies to it (see ``_COMMANDS``) lets it through."""
        s = self.settings
        keywords = ["PIPELINING", f"SIZE {s.max_message_size}", "8BITMIME", "SMTPUTF8"]
        keywords += ["ENHANCEDSTATUSCODES", "CHUNKING", "DSN"]
        if _COMMANDS["STARTTLS"].offered(self) is None:  # type: ignore[misc]
            keywords.append("STARTTLS")
        if _COMMANDS["AUTH"].offered(self) is None:  # type: ignore[misc]
            keywords.append("AUTH " + " ".join(self.offered_mechanisms()))
        return keywords

    def offered_mechanisms(self) -> tuple[str, ...]:
        """The SASL mechanisms offered now: before TLS only those safe in clear (unless
        ``auth_requires_tls`` is off), EXTERNAL only with a verified client certificate."""
        s = self.settings
        names = s.auth_mechanisms
        if not self.tls_active and s.auth_requires_tls:
            names = tuple(name for name in names if name in s.auth_clear_mechanisms)
        if not self.client_certificate_verified and "EXTERNAL" in names:
            names = tuple(name for name in names if name != "EXTERNAL")
        return names

    def _starttls_refusal(self) -> Reply | None:
        """Why STARTTLS is not offered now, or None (RFC 3207 §4.2: not again after TLS)."""
        if self.tls_active:
            return replies.TLS_ALREADY_ACTIVE
        if not self.settings.tls_available:
            return replies.TLS_NOT_AVAILABLE
        return None

    def _auth_refusal(self) -> Reply | None:
        """Why AUTH is not offered now, or None (RFC 4954 §4: 538 when it needs TLS first)."""
        s = self.settings
        if not s.auth_mechanisms:
            return replies.AUTH_NOT_AVAILABLE
        if not self.tls_active and s.tls_required:
            return replies.STARTTLS_FIRST
        if not self.offered_mechanisms():
            if not self.tls_active and s.auth_requires_tls:
                return replies.AUTH_NEEDS_TLS
            return replies.AUTH_NOT_AVAILABLE
        return None

    # --- commands ------------------------------------------------------------------------------

    def _handle_command_line(self, line: bytes) -> None:
        """Syntax, then the command's capability, then :data:`states.ALLOWED`, then its handler."""
        if b"\x00" in line:
            self._error(replies.NUL_IN_COMMAND)
            return
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            self._error(replies.BAD_UTF8_IN_COMMAND)
            return
        verb, _, argument = text.partition(" ")
        verb = verb.upper()
        limit = self.settings.max_command_line
        if verb == "MAIL" or verb == "RCPT":
            limit += _PARAMETER_ALLOWANCE
        elif verb == "AUTH":
            limit = max(limit, _AUTH_LINE_LIMIT)
        if len(line) + 2 > limit:
            self._error(replies.LINE_TOO_LONG)
            return
        spec = _COMMANDS.get(verb)
        if spec is None:
            self._error(replies.UNKNOWN_COMMAND)
            return
        if self.settings.tls_required and not self.tls_active and verb not in _BEFORE_TLS:
            self._error(replies.STARTTLS_FIRST)
            return
        no_arguments, offered, offered_first, refuse = spec
        if no_arguments is not None and argument.strip(" "):
            self._error(no_arguments)
            return
        if offered_first and (refusal := offered(self)) is not None:  # type: ignore[misc]
            self._error(refusal)
            return
        handler, refusal = _RULES[self._state][verb]
        if handler is None:
            refuse(self, argument, refusal)  # type: ignore[arg-type]
        elif offered is not None and not offered_first and (refusal := offered(self)):
            self._error(refusal)
        else:
            handler(self, argument)

    def _refuse(self, argument: str, refusal: Reply) -> None:
        self._error(refusal)

    def _await(self, event: events.Event) -> None:
        self._awaiting = event
        self._pending.append(event)

    def _helo(self, argument: str, *, extended: bool) -> None:
        name = argument.strip(" ")
        if not name:
            self._error(replies.EHLO_NEEDS_DOMAIN if extended else replies.HELO_NEEDS_DOMAIN)
            return
        if " " in name or not is_valid_helo_argument(name):
            self._error(replies.BAD_HELO_ARGUMENT)
            return
        self._await(events.Helo(name, extended))

    def _cmd_ehlo(self, argument: str) -> None:
        self._helo(argument, extended=True)

    def _cmd_helo(self, argument: str) -> None:
        self._helo(argument, extended=False)

    def _cmd_mail(self, argument: str) -> None:
        if argument[:5].upper() != "FROM:":
            self._error(replies.MAIL_SYNTAX)
            return
        path = self._parse_path(argument[5:], sender=True)
        if path is None:
            return
        if (reply := self._check_mail_parameters(path.parameters)) is not None:
            self._error(reply)
            return
        self._await(events.MailFrom(path))

    def _check_mail_parameters(self, params: dict[str, str | None]) -> Reply | None:
        unknown = set(params) - _MAIL_PARAMETERS
        if unknown:
            return replies.UNSUPPORTED_PARAMETER.with_text(
                f"Unsupported parameter {replies.quote_for_reply(sorted(unknown)[0], 20)}"
            )
        size = params.get("SIZE")
        if "SIZE" in params:
            # RFC 1870 §4: size-value is 1*20DIGIT, ASCII digits only ("²".isdigit() is True).
            if size is None or not _is_ascii_number(size, 20):
                return replies.SYNTAX_ERROR_PARAMETERS.with_text("SIZE needs a number")
            if int(size) > self.settings.max_message_size:
                return replies.MESSAGE_TOO_BIG_FOR_SIZE
        body = params.get("BODY")
        if "BODY" in params and (body is None or body.upper() not in ("7BIT", "8BITMIME")):
            return replies.UNSUPPORTED_PARAMETER.with_text("BODY must be 7BIT or 8BITMIME")
        if "SMTPUTF8" in params and params["SMTPUTF8"] is not None:
            return replies.SYNTAX_ERROR_PARAMETERS.with_text("SMTPUTF8 takes no value")
        ret = params.get("RET")
        if "RET" in params and (ret is None or ret.upper() not in ("FULL", "HDRS")):
            return replies.SYNTAX_ERROR_PARAMETERS.with_text("RET must be FULL or HDRS")
        if "ENVID" in params:
            envid = params["ENVID"]
            if envid is None or len(envid) > 100:
                return replies.SYNTAX_ERROR_PARAMETERS.with_text("ENVID must be 1-100 characters")
            try:
                parse_xtext(envid)
            except AddressError as error:
                return error.reply
        if "AUTH" in params and params["AUTH"] is None:
            return replies.SYNTAX_ERROR_PARAMETERS.with_text("AUTH= needs a mailbox or <>")
        return None

    def _parse_path(self, argument: str, *, sender: bool) -> Path | None:
        utf8 = self.utf8_transaction
        if sender and not argument.isascii():
            # RFC 6531 §3.4: non-ASCII is allowed only with the SMTPUTF8 *parameter*; look
            # for it among the parsed parameters, not as text (it could sit in a quoted
            # local part).
            utf8 = "SMTPUTF8" in mail_parameters(argument)
        if not argument.isascii() and not utf8:
            self._error(replies.EIGHT_BIT_WITHOUT_SMTPUTF8)
            return None
        try:
            return parse_path(
                argument,
                utf8=utf8,
                allow_null=sender,
                allow_postmaster=not sender,
                limits=self.settings.address_limits,
            )
        except AddressError as error:
            reply = error.reply
            if reply is replies.SYNTAX_ERROR_PARAMETERS:  # the grammar gave no reason of its own
                reply = replies.BAD_SENDER_SYNTAX if sender else replies.BAD_RECIPIENT_SYNTAX
            self._error(reply)
            return None

    def _cmd_rcpt(self, argument: str) -> None:
        if argument[:3].upper() != "TO:":
            self._error(replies.RCPT_SYNTAX)
            return
        path = self._parse_path(argument[3:], sender=False)
        if path is None:
            return
        if (reply := self._check_rcpt_parameters(path.parameters)) is not None:
            self._error(reply)
            return
        if self.recipient_count >= self.settings.max_recipients:
            # RFC 5321 §4.5.3.1.8: 452 for each extra recipient; the earlier ones stay.
            self._reply(replies.TOO_MANY_RECIPIENTS)
            return
        self._await(events.RcptTo(path))

    def _check_rcpt_parameters(self, params: dict[str, str | None]) -> Reply | None:
        unknown = set(params) - _RCPT_PARAMETERS
        if unknown:
            return replies.UNSUPPORTED_PARAMETER.with_text(
                f"Unsupported parameter {replies.quote_for_reply(sorted(unknown)[0], 20)}"
            )
        if "NOTIFY" in params:
            value = (params["NOTIFY"] or "").upper()
            items = value.split(",")
            allowed = {"SUCCESS", "FAILURE", "DELAY"}
            if value == "NEVER":
                pass
            elif not items or not all(item in allowed for item in items):
                return replies.SYNTAX_ERROR_PARAMETERS.with_text(
                    "NOTIFY must be NEVER or a list of SUCCESS, FAILURE, DELAY"
                )
        if "ORCPT" in params:
            value = params["ORCPT"] or ""
            addr_type, semicolon, xtext = value.partition(";")
            if not semicolon or not addr_type or not xtext:
                return replies.SYNTAX_ERROR_PARAMETERS.with_text("ORCPT must be type;address")
            try:
                parse_xtext(xtext)
            except AddressError as error:
                return error.reply
        return None

    def _cmd_data(self, argument: str) -> None:
        self._reply(replies.START_DATA)
        self._move(Move.START_DATA)
        self._data = DataReader(self._open_message(chunking=False), self._line_hold)

    def _bdat_chunk(self, argument: str) -> BdatReader | None:
        """The chunk a BDAT announces, or None after closing on bad syntax."""
        parts = argument.split(" ")
        # RFC 3030 §2: chunk-size is 1*DIGIT (ASCII; "²".isdigit() is True but int() fails).
        bad_size = not 1 <= len(parts) <= 2 or not _is_ascii_number(parts[0], 18)
        if bad_size or (len(parts) == 2 and parts[1].upper() != "LAST"):
            # Without a size we cannot tell where the chunk ends, and its bytes must never be
            # read as commands: answer and hang up.
            self._reply(replies.BDAT_SYNTAX)
            self._close(
                replies.SERVICE_SHUTTING_DOWN.with_text("Cannot resynchronise after bad BDAT"),
                "bad BDAT syntax",
            )
            return None
        return BdatReader(int(parts[0]), last=len(parts) == 2)

    def _cmd_bdat(self, argument: str) -> None:
        chunk = self._bdat_chunk(argument)
        if chunk is None:
            return
        if not self._message_open:
            self._open_message(chunking=True)
        self._chunk = chunk
        self._chunk_refusal = None
        self._move(Move.START_CHUNK)

    def _refuse_bdat(self, argument: str, refusal: Reply) -> None:
        # RFC 3030 §2: a BDAT that is refused still has its chunk read and thrown away.
        chunk = self._bdat_chunk(argument)
        if chunk is None:
            return
        self._chunk = chunk
        self._chunk_refusal = refusal
        self._chunk_return = self._state
        self._move(Move.START_CHUNK)

    def _cmd_rset(self, argument: str) -> None:
        if self.in_transaction or self._message_open:
            self._pending.append(events.TransactionReset())
        self._reset_transaction()
        self._move(Move.RESET)
        self._reply(replies.RESET_OK)

    def _cmd_noop(self, argument: str) -> None:
        self._reply(replies.NOOP_OK)

    def _cmd_quit(self, argument: str) -> None:
        self._close(replies.CLOSING, "client quit")

    def _cmd_vrfy(self, argument: str) -> None:
        if not argument.strip(" "):
            self._error(replies.SYNTAX_ERROR_PARAMETERS.with_text("VRFY needs an argument"))
            return
        self._await(events.Vrfy(argument.strip(" ")))

    def _cmd_help(self, argument: str) -> None:
        self._reply(replies.HELP)

    def _cmd_starttls(self, argument: str) -> None:
        self._reply(replies.READY_FOR_TLS)
        if self.in_transaction or self._message_open:
            self._pending.append(events.TransactionReset())
        self._reset_transaction()
        self._inbuf.clear()  # RFC 3207 §4.2: nothing sent before the handshake counts
        self._move(Move.STARTTLS)
        self._pending.append(events.StartTls())

    def _cmd_auth(self, argument: str) -> None:
        mechanism, _, initial = argument.strip(" ").partition(" ")
        mechanism = mechanism.upper()
        if self.authenticated:
            self._error(replies.AUTH_ALREADY_DONE)  # RFC 4954 §4: one AUTH per session
        elif mechanism not in self.offered_mechanisms():
            needs_tls = not self.tls_active and self.settings.auth_requires_tls
            if needs_tls and mechanism in self.settings.auth_mechanisms:
                # RFC 4954 §6: 538 for a mechanism offered only under TLS.
                self._error(replies.AUTH_NEEDS_TLS)
            else:
                self._error(replies.AUTH_UNKNOWN_MECHANISM)
        elif not initial:
            self._await(events.AuthRequest(mechanism, None))
        elif initial == "*":
            self._error(replies.AUTH_CANCELLED)
        elif initial == "=":
            self._await(events.AuthRequest(mechanism, b""))
        else:
            decoded = _decode_base64(initial)
            if decoded is None:
                self._error(replies.AUTH_BAD_BASE64)
            else:
                self._await(events.AuthRequest(mechanism, decoded))

    # --- message content -----------------------------------------------------------------------

    def _emit_content(self, chunk: bytes) -> None:
        # Every octet is counted, even after another error, so that the verdict does not
        # depend on how the client's bytes were split into packets.
        if chunk and self._content.count(chunk):  # type: ignore[union-attr]
            self._pending.append(events.MessageData(chunk))

    def _finish_message(self) -> None:
        if self._content.error is not None:  # type: ignore[union-attr]
            self._abort_message()
            return
        self._move(Move.END_OF_DATA)
        self._await(events.MessageComplete())

    def _abort_message(self) -> None:
        content = self._content
        reply = content.error or replies.LOCAL_ERROR  # type: ignore[union-attr]
        reason = content.reason  # type: ignore[union-attr]
        self._reset_transaction()
        self._move(Move.ABORT_MESSAGE)
        self._pending.append(events.MessageAborted(reason))
        self._error(reply)


def _is_ascii_number(text: str, max_digits: int) -> bool:
    return 0 < len(text) <= max_digits and text.isascii() and text.isdigit()


def _decode_base64(text: str) -> bytes | None:
    text = text.strip()
    if len(text) % 4:
        # RFC 4648 §4: encoded data is a multiple of 4 characters; binascii silently
        # ignores a stray trailing "=" that RFC 4954 §4 makes a 501.
        return None
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


_Refuse = Callable[[SmtpConnection, str, Reply], None]
_Offered = Callable[[SmtpConnection], "Reply | None"]


class _Command(NamedTuple):
    """What the dispatcher needs to know of a verb besides the state table."""

    no_arguments: Reply | None  # the 501 when it takes no argument but got one
    offered: _Offered | None  # why the session does not offer it now, or None (EHLO agrees)
    # Whether "not offered" is answered before the order (STARTTLS, RFC 3207 §4: 454/503
    # whatever the state) or only once the order is right (AUTH, RFC 4954 §4: 503 before
    # HELO and inside a transaction come first).
    offered_first: bool
    refuse: _Refuse  # how it is refused when out of order (BDAT still reads its chunk)


# Which state allows a verb is not here: that is :data:`states.ALLOWED`.
_COMMANDS: dict[str, _Command] = {
    verb: _Command(None, None, False, SmtpConnection._refuse) for verb in VERBS
}
_COMMANDS["BDAT"] = _Command(None, None, False, SmtpConnection._refuse_bdat)
_COMMANDS["AUTH"] = _Command(None, SmtpConnection._auth_refusal, False, SmtpConnection._refuse)
_COMMANDS["STARTTLS"] = _Command(
    replies.STARTTLS_NO_ARGUMENTS, SmtpConnection._starttls_refusal, True, SmtpConnection._refuse
)
for _verb in ("DATA", "RSET", "QUIT"):
    _COMMANDS[_verb] = _Command(
        replies.SYNTAX_ERROR_PARAMETERS.with_text(f"{_verb} takes no arguments"),
        None,
        False,
        SmtpConnection._refuse,
    )


# states.ALLOWED resolved to methods once: state -> verb -> (handler, refusal).
_RULES: dict[State, dict[str, tuple[Callable[[SmtpConnection, str], None] | None, Reply | None]]]
_RULES = {
    state: {
        verb: (getattr(SmtpConnection, rule.handler) if rule.handler else None, rule.refusal)
        for verb, rule in rules.items()
    }
    for state, rules in ALLOWED.items()
}

_STEPS: dict[State, Callable[[SmtpConnection], bool]] = {
    state: SmtpConnection._step_command for state in COMMAND_STATES
}
_STEPS[State.DATA] = SmtpConnection._step_data
_STEPS[State.BDAT] = SmtpConnection._step_bdat
_STEPS[State.AUTH_CHALLENGE] = SmtpConnection._step_auth
_STEPS[State.REJECTING] = SmtpConnection._step_rejecting

# What next_event reports in the states that read no input.
_PAUSED_IN = {
    State.CLOSED: CLOSED,
    State.AWAITING_TLS: AWAITING_TLS,
    State.BEFORE_GREETING: NEED_DATA,
}

# Event type -> its default positive reply (accept()), and -> what its answer changes
# besides the state (send_reply()); keyed by type instead of isinstance chains.
_DEFAULT_REPLY: dict[type, Callable[[SmtpConnection, Any], Reply]] = {
    events.Helo: lambda conn, event: (
        replies.ehlo_reply(conn.settings.hostname, event.name, conn.ehlo_keywords())
        if event.extended
        else replies.helo_reply(conn.settings.hostname)
    ),
    events.MailFrom: lambda conn, event: replies.SENDER_OK,
    events.RcptTo: lambda conn, event: replies.RECIPIENT_OK,
    events.MessageComplete: lambda conn, event: replies.MESSAGE_QUEUED,
    events.AuthRequest: lambda conn, event: replies.AUTH_SUCCEEDED,
    events.AuthResponse: lambda conn, event: replies.AUTH_SUCCEEDED,
    events.Vrfy: lambda conn, event: replies.VRFY_CANNOT,
}
_ANSWERED: dict[type, Callable[[SmtpConnection, Any, Reply, Outcome], bool]] = {
    events.Helo: SmtpConnection._helo_answered,
    events.MailFrom: SmtpConnection._mail_answered,
    events.RcptTo: SmtpConnection._rcpt_answered,
    events.MessageComplete: SmtpConnection._message_answered,
    events.AuthRequest: SmtpConnection._auth_answered,
    events.AuthResponse: SmtpConnection._auth_answered,
}
