"""The reply catalogue: every reply the server sends on its own initiative.

Each reply carries its RFC 5321 code and its RFC 3463 enhanced status code, and the text a client
sees. Policy scripts build their own replies with :class:`Reply`; the protocol core and the server
only ever answer with entries from this module, so a test can check the whole catalogue at once
(the class digit of the enhanced code must match the first digit of the reply code, RFC 3463 §3).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ENHANCED = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")


@dataclass(frozen=True, slots=True)
class Reply:
    """An SMTP reply: three-digit code, enhanced status code and one or more lines of text."""

    code: int
    enhanced: str
    text: str = ""
    lines: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 200 <= self.code <= 599:
            raise ValueError(f"reply code {self.code} is outside 200..599")
        if self.enhanced and not _ENHANCED.match(self.enhanced):
            raise ValueError(f"enhanced status code {self.enhanced!r} is not class.subject.detail")
        if self.enhanced and self.enhanced[0] != str(self.code)[0]:
            raise ValueError(
                f"enhanced status code {self.enhanced} does not match reply code {self.code}"
            )

    @property
    def is_positive(self) -> bool:
        return self.code < 400

    @property
    def is_transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        return self.code >= 500

    def with_text(self, text: str) -> Reply:
        return Reply(self.code, self.enhanced, text)

    def replace(
        self,
        *,
        code: int | None = None,
        enhanced: str | None = None,
        text: str | None = None,
        lines: tuple[str, ...] | None = None,
    ) -> Reply:
        """This reply with the given parts changed, checked like any other (RFC 3463 §3).

        How a script's own reply is made from a catalogue default, and how the greeting's code
        is forced to one RFC 5321 §3.1 allows while the script's enhanced code and text stay.
        """
        return Reply(
            self.code if code is None else code,
            self.enhanced if enhanced is None else enhanced,
            self.text if text is None else text,
            self.lines if lines is None else lines,
        )

    def all_lines(self) -> tuple[str, ...]:
        return (self.text, *self.lines) if self.lines else (self.text,)

    def encode(self) -> bytes:
        """Serialise as RFC 5321 §4.2.1 lines, the enhanced code on each line (RFC 2034 §4).

        Catalogue replies are sent over and over: their bytes are computed once.
        """
        cached = _ENCODED.get(self)
        if cached is not None:
            return cached
        encoded = self._encode()
        if len(_ENCODED) < _ENCODED_MAX:
            _ENCODED[self] = encoded
        return encoded

    def _encode(self) -> bytes:
        lines = self.all_lines()
        prefix = f"{self.code} {self.enhanced} " if self.enhanced else f"{self.code} "
        dash = f"{self.code}-{self.enhanced} " if self.enhanced else f"{self.code}-"
        out = [dash + sanitize_text(line) for line in lines[:-1]]
        out.append(prefix + sanitize_text(lines[-1]))
        return ("\r\n".join(out) + "\r\n").encode("utf-8", "replace")


# C0, DEL, C1 (NEL U+0085 is a line break to some readers) and the Unicode line/paragraph
# separators: none may appear inside a reply line (RFC 5321 §4.2: text is printable).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


_ENCODED: dict[Reply, bytes] = {}
_ENCODED_MAX = 4096  # replies with unique text (queue ids) fill it once, then are not kept


def sanitize_text(text: str) -> str:
    """Make text safe to place in a reply line: no CR, LF or other controls (no reply splitting)."""
    if text.isascii() and text.isprintable():
        return text  # the common case, without the regular expression
    return _UNSAFE.sub(lambda m: _escape(m.group()), text)


def quote_for_reply(raw: bytes | str, limit: int = 64) -> str:
    """Echo client input back safely: controls and non-ASCII escaped, length capped."""
    if isinstance(raw, bytes):
        text = raw.decode("ascii", "backslashreplace")
    else:
        text = raw.encode("ascii", "backslashreplace").decode("ascii")
    text = sanitize_text(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- Connection -----------------------------------------------------------------------------
# 220 is built by the server with its hostname; see greeting().
CLOSING = Reply(221, "2.0.0", "Bye")
SERVICE_SHUTTING_DOWN = Reply(421, "4.3.2", "Service shutting down, try again later")
TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "Too many connections, try again later")
TOO_MANY_CONNECTIONS_FROM_IP = Reply(421, "4.7.0", "Too many connections from your address")
TOO_MANY_ERRORS = Reply(421, "4.7.0", "Too many errors, closing connection")
TIMEOUT = Reply(421, "4.4.2", "Timeout, closing connection")
EARLY_TALKER = Reply(554, "5.5.0", "Protocol violation: you talked before the greeting")
LINE_TOO_LONG = Reply(500, "5.5.2", "Line too long")
NUL_IN_COMMAND = Reply(500, "5.5.2", "NUL character not allowed in commands")
BAD_UTF8_IN_COMMAND = Reply(500, "5.5.2", "Invalid UTF-8 in command")
EIGHT_BIT_WITHOUT_SMTPUTF8 = Reply(
    553, "5.6.7", "Non-ASCII address requires the SMTPUTF8 parameter"
)
UNKNOWN_COMMAND = Reply(500, "5.5.1", "Command unrecognized")
BAD_SEQUENCE = Reply(503, "5.5.1", "Bad sequence of commands")
SYNTAX_ERROR_PARAMETERS = Reply(501, "5.5.4", "Syntax error in parameters or arguments")
UNSUPPORTED_PARAMETER = Reply(555, "5.5.4", "Parameter not recognized or not implemented")

# --- Greeting and session -------------------------------------------------------------------
OK = Reply(250, "2.0.0", "OK")
NOOP_OK = Reply(250, "2.0.0", "OK")
RESET_OK = Reply(250, "2.0.0", "Reset OK")
HELO_NEEDS_DOMAIN = Reply(501, "5.5.4", "HELO requires a domain or address literal")
EHLO_NEEDS_DOMAIN = Reply(501, "5.5.4", "EHLO requires a domain or address literal")
BAD_HELO_ARGUMENT = Reply(501, "5.5.4", "Invalid domain or address literal")
HELO_FIRST = Reply(503, "5.5.1", "Send HELO or EHLO first")
VRFY_OK = Reply(250, "2.1.5", "User OK")  # the script's text or the quoted argument replaces it
VRFY_CANNOT = Reply(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery")
HELP = Reply(
    214,
    "2.0.0",
    "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS AUTH",
    ("See RFC 5321",),
)

# --- STARTTLS (RFC 3207) --------------------------------------------------------------------
READY_FOR_TLS = Reply(220, "2.0.0", "Ready to start TLS")
TLS_NOT_AVAILABLE = Reply(454, "4.7.0", "TLS not available")
TLS_ALREADY_ACTIVE = Reply(503, "5.5.1", "TLS already active")
TLS_HANDSHAKE_FAILED = Reply(454, "4.7.0", "TLS handshake failed")
STARTTLS_NO_ARGUMENTS = Reply(501, "5.5.4", "STARTTLS takes no arguments")
# RFC 3207 §4: the listener requires TLS (a client certificate) before anything else.
STARTTLS_FIRST = Reply(530, "5.7.0", "Must issue a STARTTLS command first")
# tls_client_certificate = "require": the certificate the client sent did not verify; the
# text says why (RFC 3463 §3.8: 5.7.1 delivery not authorized).
CLIENT_CERTIFICATE_NOT_VERIFIED = Reply(554, "5.7.1", "Client certificate not verified")

# --- AUTH (RFC 4954) ------------------------------------------------------------------------
AUTH_SUCCEEDED = Reply(235, "2.7.0", "Authentication successful")
AUTH_FAILED = Reply(535, "5.7.8", "Authentication credentials invalid")
AUTH_CANCELLED = Reply(501, "5.0.0", "Authentication cancelled")
AUTH_BAD_BASE64 = Reply(501, "5.5.2", "Cannot decode base64 response")
AUTH_ALREADY_DONE = Reply(503, "5.5.1", "Already authenticated")
AUTH_IN_TRANSACTION = Reply(503, "5.5.1", "AUTH not allowed during a mail transaction")
AUTH_NEEDS_TLS = Reply(538, "5.7.11", "Encryption required for requested authentication mechanism")
AUTH_UNKNOWN_MECHANISM = Reply(504, "5.5.4", "Unrecognized authentication mechanism")
AUTH_NOT_AVAILABLE = Reply(503, "5.5.1", "AUTH not available")
AUTH_TOO_MANY_FAILURES = Reply(421, "4.7.0", "Too many authentication failures")
AUTH_TEMPORARY_FAILURE = Reply(454, "4.7.0", "Temporary authentication failure")

# --- MAIL / RCPT ----------------------------------------------------------------------------
SENDER_OK = Reply(250, "2.1.0", "Sender OK")
RECIPIENT_OK = Reply(250, "2.1.5", "Recipient OK")
NESTED_MAIL = Reply(503, "5.5.1", "Sender already specified")
NEED_MAIL = Reply(503, "5.5.1", "Need MAIL command first")
BAD_SENDER_SYNTAX = Reply(501, "5.1.7", "Bad sender address syntax")
BAD_RECIPIENT_SYNTAX = Reply(501, "5.1.3", "Bad recipient address syntax")
MAIL_SYNTAX = Reply(501, "5.5.4", "Syntax: MAIL FROM:<address> [parameters]")
RCPT_SYNTAX = Reply(501, "5.5.4", "Syntax: RCPT TO:<address> [parameters]")
LOCAL_PART_TOO_LONG = Reply(553, "5.1.3", "Local part too long")
DOMAIN_TOO_LONG = Reply(553, "5.1.2", "Domain too long")
PATH_TOO_LONG = Reply(553, "5.1.3", "Path too long")
MESSAGE_TOO_BIG_FOR_SIZE = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")
RELAY_DENIED = Reply(554, "5.7.1", "Relay access denied")
ROUTING_REFUSED = Reply(553, "5.7.1", "Sender-specified routing (% ! @ in local part) refused")

# --- DATA / BDAT ----------------------------------------------------------------------------
START_DATA = Reply(354, "", "End data with <CR><LF>.<CR><LF>")
MESSAGE_QUEUED = Reply(250, "2.0.0", "Message queued")
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
DATA_LINE_TOO_LONG = Reply(500, "5.5.2", "Line too long in message data")
HEADER_TOO_BIG = Reply(552, "5.3.4", "Message header section too large")
# X.6.0 "other or undefined media error" (RFC 3463 §3.7): no registered code is more specific.
BARE_LINE_ENDING = Reply(
    550, "5.6.0", "Bare CR or LF in message data is not allowed (SMTP smuggling protection)"
)
DATA_AFTER_BDAT = Reply(503, "5.5.1", "DATA not allowed after BDAT in one transaction")
BDAT_SYNTAX = Reply(501, "5.5.4", "Syntax: BDAT <size> [LAST]")
BDAT_CHUNK_OK = Reply(250, "2.0.0", "Chunk accepted")
NO_VALID_RECIPIENTS = Reply(554, "5.5.1", "No valid recipients")
MESSAGE_DISCARDED = Reply(250, "2.0.0", "Message accepted")

# --- Local failures -------------------------------------------------------------------------
LOCAL_ERROR = Reply(451, "4.3.0", "Local error in processing, try again later")
SPOOL_WRITE_FAILED = Reply(451, "4.3.0", "Could not store the message, try again later")
# A full spool answers end of data with 451, not 452: the sender must retry the whole message.
SPOOL_FULL = Reply(451, "4.3.1", "Insufficient system storage, try again later")
SCRIPT_ERROR = Reply(451, "4.3.0", "Temporary local policy error, try again later")
# At connect only 220, 421 and 554 may greet (RFC 5321 §3.1): a failed connect hook is a 421.
SCRIPT_ERROR_AT_CONNECT = Reply(421, "4.3.2", "Try again later")
# The defaults of a script's Defer and Reject (policy/actions.py) when it gives no code or text.
SCRIPT_DEFER = Reply(451, "4.7.1", "Try again later")
SCRIPT_REJECT = Reply(550, "5.7.1", "Rejected by policy")

# --- Outbound delivery: our own verdict on an attempt (the Status of a DSN, RFC 3463) ---------
# delivery/connection.py turns these into DeliveryReply (remote=False) and adds the detail.
# X.4.1 "no answer from host": the connection was never established (refused, unreachable,
# timed out); X.4.2 "bad connection": it was, then failed (RFC 3463 §3.5).
DELIVERY_CONNECT_FAILED = Reply(451, "4.4.1", "Connection failed")
DELIVERY_REPLY_TIMEOUT = Reply(451, "4.4.2", "Timed out waiting for the remote server")
DELIVERY_CONNECTION_LOST = Reply(451, "4.4.2", "Lost connection with the remote server")
DELIVERY_PROTOCOL_ERROR = Reply(451, "4.5.0", "Remote server protocol error")
# X.7.4 "security features not supported", X.7.5 "cryptographic failure" (RFC 3463 §3.8).
DELIVERY_TLS_NOT_OFFERED = Reply(454, "4.7.4", "TLS is required, but was not offered")
DELIVERY_TLS_FAILED = Reply(454, "4.7.5", "TLS failed")
DELIVERY_TLS_CONFIG = Reply(454, "4.7.0", "Client TLS configuration problem")
# An MX host the recipient domain's MTA-STS policy does not list (RFC 8461 §5: not used).
DELIVERY_TLS_POLICY_REFUSED = Reply(454, "4.7.5", "MX host not allowed by the TLS policy")
# X.7.11 "encryption required for requested authentication mechanism" (RFC 4954 §6).
DELIVERY_AUTH_NEEDS_TLS = Reply(454, "4.7.11", "Credentials are not sent without TLS")
DELIVERY_AUTH_UNAVAILABLE = Reply(
    454, "4.7.0", "The remote server offers neither AUTH PLAIN nor LOGIN"
)
# A 5xx to AUTH defers rather than bounces (as Postfix's smtp_sasl_auth_soft_bounce): a
# wrong password in the route should not return every message.
DELIVERY_AUTH_FAILED = Reply(454, "4.7.8", "Authentication failed")
# Postfix's "mail for X loops back to myself": the next hop greets with our own name.
DELIVERY_LOOPS_BACK = Reply(554, "5.4.6", "Mail loops back to myself")
DELIVERY_MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Message size exceeds the remote server's limit")
DELIVERY_NEEDS_SMTPUTF8 = Reply(550, "5.6.7", "The remote server does not support SMTPUTF8")

# --- Delivery outcomes the node decides itself (DSN Status and Diagnostic-Code) --------------
# `mailwarden queue update bounce`: X.0.0 "other undefined status" (RFC 3463 §3.1), as no
# registered code says "the operator cancelled delivery".
OPERATOR_BOUNCE = Reply(550, "5.0.0", "Delivery cancelled by the queue operator")
# A hold with on_expiry="bounce" whose retention ended: the message was refused by policy
# (X.7.1, RFC 3463 §3.8) in the end, since nobody released it.
HOLD_EXPIRED = Reply(550, "5.7.1", "Message held by policy and not released in time")


def greeting(hostname: str, banner: str = "ESMTP Mailwarden") -> Reply:
    return Reply(220, "", f"{hostname} {banner}")


def ehlo_reply(hostname: str, client_name: str, keywords: list[str]) -> Reply:
    """EHLO response (RFC 5321 §4.1.1.1): greeting line, then one extension keyword per line."""
    return Reply(250, "", f"{hostname} greets {quote_for_reply(client_name)}", tuple(keywords))


def helo_reply(hostname: str) -> Reply:
    return Reply(250, "", hostname)


def catalogue() -> dict[str, Reply]:
    """All catalogue replies by name, for the consistency test and for documentation."""
    return {name: value for name, value in globals().items() if isinstance(value, Reply)}
