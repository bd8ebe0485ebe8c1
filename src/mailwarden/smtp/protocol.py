"""The sans-I/O SMTP server state machine (RFC 5321 with the extensions Mailwarden offers).

Bytes go in with :meth:`SmtpConnection.receive_data`; events come out of
:meth:`SmtpConnection.next_event`; replies go in with :meth:`accept` or :meth:`send_reply`;
bytes to write come out of :meth:`data_to_send`. Nothing here touches a socket, a clock or a
file, so every rule below is tested by feeding bytes, whole or one at a time.

The core answers by itself whatever needs no decision (syntax errors, bad sequences, limits,
NOOP, RSET, HELP, QUIT) and pauses on each event that needs the server's decision, so that with
PIPELINING (RFC 2920) replies always come back in command order.
"""

from __future__ import annotations

import base64
import binascii
import enum
from dataclasses import dataclass, field

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
from mailwarden.smtp.replies import Reply


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
    max_auth_failures: int = 3


class _State(enum.Enum):
    BEFORE_GREETING = 0
    COMMAND = 1
    DATA = 2
    BDAT = 3
    AUTH_CHALLENGE = 4
    AWAITING_TLS = 5
    REJECTING = 6  # greeting was 554: answer 503 to all but QUIT (RFC 5321 §3.1)
    CLOSED = 7


# MAIL and RCPT lines grow with each extension's parameters (RFC 1870 §3, RFC 3461 §5, RFC 4954
# §5); keep the plain limit for other commands and allow this much more for these two.
_PARAMETER_ALLOWANCE = 512
_MAIL_PARAMETERS = frozenset({"SIZE", "BODY", "SMTPUTF8", "RET", "ENVID", "AUTH"})
_RCPT_PARAMETERS = frozenset({"NOTIFY", "ORCPT"})
# RFC 4954 §4: AUTH lines (command with initial response, or an answer) up to 12288 octets.
_AUTH_LINE_LIMIT = 12288
_DATA_END = b"\r\n.\r\n"
# Most octets of one DATA line held in memory (less when max_text_line is smaller): the rest of
# a longer line is checked and passed on as it comes, so memory stays bounded however long the
# line is, in strict mode or not.
_LINE_HOLD = 1000
# Which content error a refused message reports when it broke several rules (lower wins):
# smuggling first, as it is the one an operator must be able to find in the logs.
_DATA_ERROR_RANK = {
    "bare CR or LF in data": 0,
    "NUL in data": 1,
    "line too long": 2,
    "message too big": 3,
}


class _Handled(enum.Enum):
    HANDLED = "handled"


HANDLED = _Handled.HANDLED


class SmtpConnection:
    """One SMTP session, server side, as a pure state machine.

    Failure behaviour: peer errors never raise; they become replies (with enhanced codes) and,
    past ``max_errors``, a 421 and ``ConnectionClosing``. Calling a method out of turn (say,
    ``send_reply`` with no event awaiting a reply) is a bug in the caller and raises
    ``RuntimeError``.
    """

    def __init__(self, settings: ProtocolSettings) -> None:
        self.settings = settings
        self._state = _State.BEFORE_GREETING
        self._inbuf = bytearray()
        self._outbuf = bytearray()
        self._pending: list[events.Event] = []
        self._awaiting: events.Event | None = None
        self._skipping_line = False
        self._eof = False
        self._buffer_limit = max(settings.max_command_line + _PARAMETER_ALLOWANCE, _AUTH_LINE_LIMIT)
        self._line_hold = min(settings.max_text_line, _LINE_HOLD)
        self.errors = 0
        self.auth_failures = 0
        self.tls_active = False
        self.authenticated = False
        self.helo_name: str | None = None
        self.extended = False
        self._reset_transaction()

    # --- transaction state -------------------------------------------------------------------

    def _reset_transaction(self) -> None:
        self.mail_from: Path | None = None
        self.recipient_count = 0
        self.utf8_transaction = False
        self._bdat_used = False
        self._message_open = False
        self._message_size = 0
        self._data_error: Reply | None = None
        self._data_reason = ""
        self._at_line_start = True
        self._line_length = 0
        self._bdat_remaining = 0
        self._bdat_last = False
        self._bdat_discard = False
        self._bdat_error: Reply | None = None

    @property
    def in_transaction(self) -> bool:
        return self.mail_from is not None

    @property
    def closed(self) -> bool:
        return self._state is _State.CLOSED

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
        return self._state in (_State.DATA, _State.BDAT)

    # --- output --------------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """Bytes to write to the client now (possibly empty)."""
        if not self._outbuf:
            return b""
        out = bytes(self._outbuf)
        self._outbuf.clear()
        return out

    def _reply(self, reply: Reply) -> None:
        self._outbuf += reply.encode()

    def _close(self, reply: Reply | None, reason: str) -> None:
        if reply is not None:
            self._reply(reply)
        if self._message_open and not isinstance(self._awaiting, events.MessageComplete):
            # A message cut off by the close (client EOF, timeout, shutdown) must never be
            # queued: tell the server to discard what it stored (RFC 5321 §4.1.1.4, the
            # message is only accepted at end of data).
            self._pending.append(events.MessageAborted(f"connection closed: {reason}"))
            self._reset_transaction()
        self._state = _State.CLOSED
        self._inbuf.clear()
        self._pending.append(events.ConnectionClosing(reason))

    def _error(self, reply: Reply) -> None:
        """A peer error: answer it, and hang up once the client has made too many (§4.5.3)."""
        self.errors += 1
        if self.errors >= self.settings.max_errors:
            self._reply(reply)
            self._close(replies.TOO_MANY_ERRORS, "too many errors")
        else:
            self._reply(reply)

    # --- greeting and connection-level calls from the server ---------------------------------

    def send_greeting(self, reply: Reply) -> None:
        """Send the 220 greeting, or a 421/554 refusal chosen by the connect policy."""
        if self._state is _State.CLOSED:
            return  # the client left while the connect policy ran: nothing to greet
        if self._state is not _State.BEFORE_GREETING:
            raise RuntimeError("greeting already sent")
        if self._inbuf and self.settings.reject_early_talkers:
            self._close(replies.EARLY_TALKER, "client talked before the greeting")
            return
        self._reply(reply)
        if reply.code == 220:
            self._state = _State.COMMAND
        elif reply.code == 554:
            self._state = _State.REJECTING
        else:
            self._close(None, f"connection refused with {reply.code}")

    def close_with(self, reply: Reply, reason: str) -> None:
        """Server-initiated end: timeouts, shutdown, per-IP limits. Sends ``reply`` and closes."""
        if self._state is not _State.CLOSED:
            self._close(reply, reason)

    def tls_established(self) -> None:
        """The TLS handshake after STARTTLS succeeded: the session starts afresh (RFC 3207 §4.2)."""
        if self._state is not _State.AWAITING_TLS:
            raise RuntimeError("tls_established without STARTTLS")
        self.tls_active = True
        self.helo_name = None
        self.extended = False
        self._reset_transaction()
        self._inbuf.clear()
        self._state = _State.COMMAND

    # --- input ---------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Add bytes received from the client. Empty bytes mean the client closed its sending
        side (EOF): commands it pipelined before that are still answered, then the session
        closes (a client may send a whole transaction and QUIT, then shut down writing)."""
        if self._state is _State.CLOSED:
            return
        if not data:
            self._eof = True
            if self._state in (_State.BEFORE_GREETING, _State.AWAITING_TLS):
                self._close(None, "client closed the connection")
            return
        if self._state is _State.AWAITING_TLS:
            # RFC 3207 §4.2 / CVE-2011-0411: plaintext pipelined after STARTTLS is discarded.
            return
        if self._state is _State.BEFORE_GREETING and self.settings.reject_early_talkers:
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
            if self._state is _State.CLOSED:
                return CLOSED
            if self._awaiting is not None:
                return AWAITING_REPLY
            if self._state is _State.AWAITING_TLS:
                return AWAITING_TLS
            if self._state is _State.BEFORE_GREETING:
                return NEED_DATA
            if not self._step():
                if self._pending:
                    return self._pending.pop(0)
                if self._eof:
                    self._close(None, "client closed the connection")
                    continue
                return NEED_DATA

    def connection_lost(self) -> None:
        """The connection is gone in both directions: close now, answer nothing more."""
        if self._state is not _State.CLOSED:
            self._close(None, "connection lost")

    def _step(self) -> bool:
        """Consume input for one unit of work. False when more bytes are needed."""
        if self._state is _State.DATA:
            return self._step_data()
        if self._state is _State.BDAT:
            return self._step_bdat()
        line = self._take_line()
        if line is None:
            return False
        if line is HANDLED:
            return True
        assert isinstance(line, bytes)
        if self._state is _State.AUTH_CHALLENGE:
            self._handle_auth_line(line)
        elif self._state is _State.REJECTING:
            if line.strip().upper() == b"QUIT":
                self._close(replies.CLOSING, "client quit")
            else:
                self._reply(replies.BAD_SEQUENCE)
        else:
            self._handle_command_line(line)
        return True

    def _take_line(self) -> bytes | _Handled | None:
        """One command line without its CRLF, None if incomplete, HANDLED if already answered.

        Enforces the line limits of RFC 5321 §4.5.3.1.4 (and RFC 4954 §4 for AUTH): an overlong
        line is discarded up to its end and answered once, so memory stays bounded.
        """
        buf = self._inbuf
        newline = buf.find(b"\n")
        if newline < 0:
            if len(buf) > self._buffer_limit:
                self._skipping_line = True
                del buf[:]
            return None
        line = bytes(buf[:newline])
        del buf[: newline + 1]
        if self._skipping_line or newline > self._buffer_limit:
            # The same verdict whether the line came whole or in pieces: a line that would
            # have overflowed the buffer is too long, whatever it contains.
            self._skipping_line = False
            self._error(replies.LINE_TOO_LONG)
            return HANDLED
        if not line.endswith(b"\r"):
            self._error(
                replies.SYNTAX_ERROR_PARAMETERS.with_text("Bare LF in command; end lines with CRLF")
            )
            return HANDLED
        if b"\r" in line[:-1]:
            # RFC 5321 §2.3.8: CR and LF only ever travel together as the line terminator;
            # a bare CR inside a command could hide a second command from a proxy.
            self._error(
                replies.SYNTAX_ERROR_PARAMETERS.with_text("Bare CR in command; end lines with CRLF")
            )
            return HANDLED
        return line[:-1]

    # --- replies from the server ---------------------------------------------------------------

    def accept(self) -> None:
        """Answer the awaited event with its default positive reply."""
        event = self._awaiting
        if isinstance(event, events.Helo):
            if event.extended:
                reply = replies.ehlo_reply(self.settings.hostname, event.name, self.ehlo_keywords())
            else:
                reply = replies.helo_reply(self.settings.hostname)
        elif isinstance(event, events.MailFrom):
            reply = replies.SENDER_OK
        elif isinstance(event, events.RcptTo):
            reply = replies.RECIPIENT_OK
        elif isinstance(event, events.MessageComplete):
            reply = replies.MESSAGE_QUEUED
        elif isinstance(event, events.AuthRequest | events.AuthResponse):
            reply = replies.AUTH_SUCCEEDED
        elif isinstance(event, events.Vrfy):
            reply = replies.VRFY_CANNOT
        else:
            raise RuntimeError("accept() with no event awaiting a reply")
        self.send_reply(reply)

    def send_reply(self, reply: Reply, *, disconnect: bool = False) -> None:
        """Answer the awaited event. A positive reply moves the session on; ``disconnect`` or a
        421 closes it after this reply (RFC 5321 §3.8)."""
        event = self._awaiting
        if event is None:
            raise RuntimeError("send_reply() with no event awaiting a reply")
        self._awaiting = None
        positive = reply.code < 400
        if isinstance(event, events.Helo):
            if positive:
                # RFC 5321 §4.1.4: only an EHLO/HELO the server accepts clears the transaction
                # "as if RSET"; a refused one leaves it as it was.
                if self.in_transaction or self._message_open:
                    self._pending.append(events.TransactionReset())
                self._reset_transaction()
                self.helo_name = event.name
                self.extended = event.extended
        elif isinstance(event, events.MailFrom):
            if positive:
                self.mail_from = event.path
                self.utf8_transaction = "SMTPUTF8" in event.path.parameters
        elif isinstance(event, events.RcptTo):
            if positive:
                self.recipient_count += 1
        elif isinstance(event, events.MessageComplete):
            self._reset_transaction()
        elif isinstance(event, events.AuthRequest | events.AuthResponse):
            if reply.code == 334:
                self._state = _State.AUTH_CHALLENGE
            else:
                self._state = _State.COMMAND
                if reply.code == 235:
                    self.authenticated = True
                elif reply.code == 535:
                    self.auth_failures += 1
                    if self.auth_failures >= self.settings.max_auth_failures:
                        self._reply(reply)
                        self._close(replies.AUTH_TOO_MANY_FAILURES, "too many AUTH failures")
                        return
        self._reply(reply)
        if disconnect or reply.code == 421:
            self._close(None, f"server closed after {reply.code}")

    def send_auth_challenge(self, challenge: bytes) -> None:
        """Answer an AUTH event with a 334 challenge (RFC 4954 §4); the next line is the answer."""
        encoded = base64.b64encode(challenge).decode("ascii")
        self.send_reply(Reply(334, "", encoded))

    def auth_failure_delay(self) -> float:
        """Seconds to wait before answering a failed AUTH: grows with each failure."""
        return min(2.0**self.auth_failures, 8.0) if self.auth_failures else 0.0

    # --- capabilities --------------------------------------------------------------------------

    def ehlo_keywords(self) -> list[str]:
        s = self.settings
        keywords = ["PIPELINING", f"SIZE {s.max_message_size}", "8BITMIME", "SMTPUTF8"]
        keywords += ["ENHANCEDSTATUSCODES", "CHUNKING", "DSN"]
        if s.tls_available and not self.tls_active:
            keywords.append("STARTTLS")
        if self._auth_offered():
            keywords.append("AUTH " + " ".join(s.auth_mechanisms))
        return keywords

    def _auth_offered(self) -> bool:
        s = self.settings
        return bool(s.auth_mechanisms) and (self.tls_active or not s.auth_requires_tls)

    # --- commands ------------------------------------------------------------------------------

    def _handle_command_line(self, line: bytes) -> None:
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
        if verb in ("MAIL", "RCPT"):
            limit += _PARAMETER_ALLOWANCE
        elif verb == "AUTH":
            limit = max(limit, _AUTH_LINE_LIMIT)
        if len(line) + 2 > limit:
            self._error(replies.LINE_TOO_LONG)
            return
        handler = _COMMANDS.get(verb)
        if handler is None:
            self._error(replies.UNKNOWN_COMMAND)
            return
        handler(self, argument)

    def _await(self, event: events.Event) -> None:
        self._awaiting = event
        self._pending.append(event)

    def _cmd_helo(self, argument: str, *, extended: bool) -> None:
        name = argument.strip(" ")
        if not name:
            self._error(replies.EHLO_NEEDS_DOMAIN if extended else replies.HELO_NEEDS_DOMAIN)
            return
        if " " in name or not is_valid_helo_argument(name):
            self._error(replies.BAD_HELO_ARGUMENT)
            return
        self._await(events.Helo(name, extended))

    def _cmd_ehlo(self, argument: str) -> None:
        self._cmd_helo(argument, extended=True)

    def _cmd_helo_plain(self, argument: str) -> None:
        self._cmd_helo(argument, extended=False)

    def _needs_helo(self) -> bool:
        if self.helo_name is None:
            self._error(replies.HELO_FIRST)
            return True
        return False

    def _cmd_mail(self, argument: str) -> None:
        if self._needs_helo():
            return
        if self.in_transaction:
            self._error(replies.NESTED_MAIL)
            return
        if argument[:5].upper() != "FROM:":
            self._error(replies.MAIL_SYNTAX)
            return
        path = self._parse_path(argument[5:], sender=True)
        if path is None:
            return
        params = path.parameters
        if (reply := self._check_mail_parameters(params)) is not None:
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
            if reply.code == 501 and reply.text == replies.SYNTAX_ERROR_PARAMETERS.text:
                reply = replies.BAD_SENDER_SYNTAX if sender else replies.BAD_RECIPIENT_SYNTAX
            self._error(reply)
            return None

    def _cmd_rcpt(self, argument: str) -> None:
        if self._needs_helo():
            return
        if not self.in_transaction:
            self._error(replies.NEED_MAIL)
            return
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
        if argument.strip(" "):
            self._error(replies.SYNTAX_ERROR_PARAMETERS.with_text("DATA takes no arguments"))
        elif self._needs_helo():
            return
        elif not self.in_transaction:
            self._error(replies.NEED_MAIL)
        elif self._bdat_used:
            self._error(replies.DATA_AFTER_BDAT)
        elif self.recipient_count == 0:
            self._error(replies.NO_VALID_RECIPIENTS)
        else:
            self._reply(replies.START_DATA)
            self._state = _State.DATA
            self._message_open = True
            self._at_line_start = True
            self._line_length = 0
            self._pending.append(events.MessageStart(chunking=False))

    def _cmd_bdat(self, argument: str) -> None:
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
            return
        size = int(parts[0])
        self._bdat_remaining = size
        self._bdat_last = len(parts) == 2
        self._state = _State.BDAT
        # RFC 3030 §2: a BDAT that is refused still has its chunk read and thrown away.
        refusal: Reply | None = None
        if self.helo_name is None:
            refusal = replies.HELO_FIRST
        elif not self.in_transaction:
            refusal = replies.NEED_MAIL
        elif self.recipient_count == 0:
            refusal = replies.NO_VALID_RECIPIENTS
        if refusal is not None:
            self._bdat_discard = True
            self._bdat_error = refusal
            return
        self._bdat_discard = False
        if not self._bdat_used:
            self._bdat_used = True
            self._message_open = True
            self._pending.append(events.MessageStart(chunking=True))

    def _cmd_rset(self, argument: str) -> None:
        if argument.strip(" "):
            self._error(replies.SYNTAX_ERROR_PARAMETERS.with_text("RSET takes no arguments"))
            return
        if self.in_transaction or self._message_open:
            self._pending.append(events.TransactionReset())
        self._reset_transaction()
        self._reply(replies.RESET_OK)

    def _cmd_noop(self, argument: str) -> None:
        self._reply(replies.NOOP_OK)

    def _cmd_quit(self, argument: str) -> None:
        if argument.strip(" "):
            self._error(replies.SYNTAX_ERROR_PARAMETERS.with_text("QUIT takes no arguments"))
            return
        self._close(replies.CLOSING, "client quit")

    def _cmd_vrfy(self, argument: str) -> None:
        if not argument.strip(" "):
            self._error(replies.SYNTAX_ERROR_PARAMETERS.with_text("VRFY needs an argument"))
            return
        self._await(events.Vrfy(argument.strip(" ")))

    def _cmd_help(self, argument: str) -> None:
        self._reply(replies.HELP)

    def _cmd_starttls(self, argument: str) -> None:
        if argument.strip(" "):
            self._error(replies.STARTTLS_NO_ARGUMENTS)
        elif self.tls_active:
            self._error(replies.TLS_ALREADY_ACTIVE)
        elif not self.settings.tls_available:
            self._error(replies.TLS_NOT_AVAILABLE)
        elif self._needs_helo():
            return
        else:
            self._reply(replies.READY_FOR_TLS)
            if self.in_transaction or self._message_open:
                self._pending.append(events.TransactionReset())
            self._reset_transaction()
            self._inbuf.clear()  # RFC 3207 §4.2: nothing sent before the handshake counts
            self._state = _State.AWAITING_TLS
            self._pending.append(events.StartTls())

    def _cmd_auth(self, argument: str) -> None:
        s = self.settings
        mechanism, _, initial = argument.strip(" ").partition(" ")
        mechanism = mechanism.upper()
        if self._needs_helo():
            return
        if not s.auth_mechanisms:
            self._error(replies.AUTH_NOT_AVAILABLE)
        elif self.authenticated:
            self._error(replies.AUTH_ALREADY_DONE)
        elif self.in_transaction:
            self._error(replies.AUTH_IN_TRANSACTION)
        elif not self._auth_offered():
            self._error(replies.AUTH_NEEDS_TLS)
        elif mechanism not in s.auth_mechanisms:
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

    def _handle_auth_line(self, line: bytes) -> None:
        self._state = _State.COMMAND
        text = line.strip(b" ")
        if text == b"*":
            self._error(replies.AUTH_CANCELLED)  # RFC 4954 §4: the client cancelled
            return
        decoded = _decode_base64(text.decode("ascii", "replace"))
        if decoded is None:
            self._error(replies.AUTH_BAD_BASE64)
            return
        self._await(events.AuthResponse(decoded))

    # --- message content -----------------------------------------------------------------------

    def _emit_content(self, chunk: bytes) -> None:
        if not chunk:
            return
        # Count every octet, even after another error, so that the verdict does not depend
        # on how the client's bytes were split into packets.
        self._message_size += len(chunk)
        if self._message_size > self.settings.max_message_size:
            self._fail_data(replies.MESSAGE_TOO_BIG, "message too big")
        if self._data_error is None:
            self._pending.append(events.MessageData(chunk))

    def _fail_data(self, reply: Reply, reason: str) -> None:
        """Remember why the message will be refused at its end.

        When content breaks several rules, the most serious one is reported, whatever order
        the bytes arrived in (so a message fed whole or one byte at a time gets one answer).
        """
        rank = _DATA_ERROR_RANK[reason]
        if self._data_error is None or rank < _DATA_ERROR_RANK[self._data_reason]:
            self._data_error = reply
            self._data_reason = reason

    def _check_lines(self, content: bytes) -> None:
        """Bare CR/LF, NUL and (in strict mode) line-length rules for a run of DATA bytes.

        ``content`` is a run of complete lines, or the start of one long line. The bare CR/LF
        and NUL rules judge every octet the same way whatever the line length: only the
        length rule depends on ``strict_line_length``.
        """
        # One split serves all three rules (the profile showed separate scans to cost more
        # than the rest of the DATA path): once every CRLF is gone, any CR or LF left is bare.
        lines = content.split(b"\r\n")
        rest = b"".join(lines) if len(lines) > 1 else content
        if (b"\r" in rest or b"\n" in rest) and (
            self.settings.bare_line_endings is BareLineEndings.REJECT
        ):
            self._fail_data(replies.BARE_LINE_ENDING, "bare CR or LF in data")
        if b"\x00" in rest:
            self._fail_data(
                replies.BARE_LINE_ENDING.with_text("NUL character in message data"), "NUL in data"
            )
        if not self.settings.strict_line_length:
            return
        # RFC 5321 §4.5.3.1.6: a text line is at most 1000 octets with its CRLF.
        limit = self.settings.max_text_line - 2
        if self._line_length + len(lines[0]) > limit or (
            len(content) > limit and max(map(len, lines)) > limit
        ):
            self._fail_data(replies.DATA_LINE_TOO_LONG, "line too long")

    def _step_data(self) -> bool:
        buf = self._inbuf
        if not buf:
            return False
        if self._at_line_start and buf[:3] == b".\r\n":
            end, resume = 0, 3
        else:
            found = buf.find(_DATA_END)
            end, resume = (found + 2, found + 5) if found >= 0 else (-1, -1)
        if end < 0:
            # No terminator yet: take every complete line, keep the tail for the next round.
            last = buf.rfind(b"\r\n")
            if last < 0:
                if len(buf) > self._line_hold:
                    # One long line: check and pass on what is dropped exactly as if the
                    # line had come whole, and keep only a possible CR of a coming CRLF.
                    dropped = bytes(buf[:-1])
                    self._check_lines(dropped)
                    if self._at_line_start and dropped[:1] == b".":
                        dropped = dropped[1:]
                    self._emit_content(dropped)
                    self._line_length += len(buf) - 1
                    self._at_line_start = False
                    del buf[:-1]
                return False
            end = last + 2
            resume = end
        content = bytes(buf[:end])
        del buf[:resume]
        finished = resume != end
        self._check_lines(content)
        # Dot-unstuffing (RFC 5321 §4.5.2): drop the first dot of each line that starts with one.
        if self._at_line_start and content[:1] == b".":
            content = content[1:]
        content = content.replace(b"\r\n.", b"\r\n")
        last_crlf = content.endswith(b"\r\n")
        self._at_line_start = last_crlf or (not content and self._at_line_start)
        self._line_length = 0
        self._emit_content(content)
        if finished:
            self._finish_message()
        return True

    def _step_bdat(self) -> bool:
        buf = self._inbuf
        if self._bdat_remaining:
            if not buf:
                return False
            take = min(len(buf), self._bdat_remaining)
            chunk = bytes(buf[:take])
            del buf[:take]
            self._bdat_remaining -= take
            if not self._bdat_discard:
                self._emit_content(chunk)
            if self._bdat_remaining:
                return True
        # The whole chunk has been read.
        self._state = _State.COMMAND
        if self._bdat_discard:
            self._bdat_discard = False
            error, self._bdat_error = self._bdat_error, None
            if error is not None:
                self._error(error)
            return True
        if self._bdat_last:
            self._finish_message()
        elif self._data_error is not None:
            self._abort_message()
        else:
            self._reply(replies.BDAT_CHUNK_OK.with_text(f"{self._message_size} octets received"))
        return True

    def _finish_message(self) -> None:
        self._state = _State.COMMAND
        if self._data_error is not None:
            self._abort_message()
            return
        self._await(events.MessageComplete())

    def _abort_message(self) -> None:
        reply, reason = self._data_error or replies.LOCAL_ERROR, self._data_reason
        self._reset_transaction()
        self._state = _State.COMMAND
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


_COMMANDS = {
    "EHLO": SmtpConnection._cmd_ehlo,
    "HELO": SmtpConnection._cmd_helo_plain,
    "MAIL": SmtpConnection._cmd_mail,
    "RCPT": SmtpConnection._cmd_rcpt,
    "DATA": SmtpConnection._cmd_data,
    "BDAT": SmtpConnection._cmd_bdat,
    "RSET": SmtpConnection._cmd_rset,
    "NOOP": SmtpConnection._cmd_noop,
    "QUIT": SmtpConnection._cmd_quit,
    "VRFY": SmtpConnection._cmd_vrfy,
    "HELP": SmtpConnection._cmd_help,
    "STARTTLS": SmtpConnection._cmd_starttls,
    "AUTH": SmtpConnection._cmd_auth,
}
