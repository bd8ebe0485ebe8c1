"""The server core's states and its transition tables: the single source of truth for order.

Which command is allowed in which state (RFC 5321 §4.1.4, §3.3; RFC 3030 §2; RFC 3207 §4.2;
RFC 4954 §4) lives in :data:`ALLOWED` and nowhere else: the dispatcher in ``protocol.py`` looks
the command up here and either calls its handler or sends the out-of-order reply given here;
handlers never re-check command order. How a reply to an event moves the session on lives in
:data:`AFTER_REPLY`, and the other moves (greeting, end of data, STARTTLS) in
:data:`TRANSITIONS`.
"""

from __future__ import annotations

import enum
from types import MappingProxyType

from mailwarden.smtp import events, replies
from mailwarden.smtp.replies import Reply


class State(enum.Enum):
    """Where the session is. The command states split the envelope's progress."""

    BEFORE_GREETING = "before-greeting"
    GREETED = "greeted"  # greeted with 220, no HELO/EHLO accepted yet
    READY = "ready"  # HELO/EHLO accepted, no transaction
    MAIL = "mail"  # MAIL accepted, no recipient yet
    RCPT = "rcpt"  # at least one recipient accepted
    CHUNKING = "chunking"  # a BDAT chunk accepted, more chunks (or LAST) to come
    DATA = "data"  # reading DATA content
    BDAT = "bdat"  # reading a BDAT chunk's octets
    AUTH_CHALLENGE = "auth-challenge"  # a 334 was sent: the next line answers it
    AWAITING_TLS = "awaiting-tls"  # 220 to STARTTLS sent: the handshake comes next
    REJECTING = "rejecting"  # greeting was 554: 503 to all but QUIT (RFC 5321 §3.1)
    CLOSED = "closed"


COMMAND_STATES = (State.GREETED, State.READY, State.MAIL, State.RCPT, State.CHUNKING)
"""States in which a line is a command (looked up in :data:`ALLOWED`)."""

TRANSACTION_STATES = (State.MAIL, State.RCPT, State.CHUNKING)

VERBS = (
    "EHLO",
    "HELO",
    "MAIL",
    "RCPT",
    "DATA",
    "BDAT",
    "RSET",
    "NOOP",
    "QUIT",
    "VRFY",
    "HELP",
    "STARTTLS",
    "AUTH",
)
"""Every command the core knows; any other verb is 500 in every command state."""

# Commands with no order constraint (RFC 5321 §4.1.4: these may be sent at any time).
_ANY_TIME = ("EHLO", "HELO", "RSET", "NOOP", "QUIT", "VRFY", "HELP")


class Rule:
    """What one command does in one state: run ``handler``, or answer ``refusal``.

    ``handler`` names a ``_cmd_*`` method of the connection (looked up once, at import).
    """

    __slots__ = ("handler", "refusal")

    def __init__(self, handler: str | None = None, refusal: Reply | None = None) -> None:
        if (handler is None) == (refusal is None):
            raise ValueError("a rule has a handler or a refusal, not both")
        self.handler = handler
        self.refusal = refusal

    def __repr__(self) -> str:
        return f"Rule({self.handler or self.refusal!r})"


def _run(verb: str) -> Rule:
    return Rule(handler=f"_cmd_{verb.lower()}")


def _refuse(reply: Reply) -> Rule:
    return Rule(refusal=reply)


def _table() -> dict[State, dict[str, Rule]]:
    # Before HELO/EHLO: RFC 5321 §4.1.4 lets a server refuse mail commands with 503.
    greeted = {verb: _refuse(replies.HELO_FIRST) for verb in VERBS}
    ready = {verb: _run(verb) for verb in VERBS}
    ready["RCPT"] = _refuse(replies.NEED_MAIL)
    ready["DATA"] = _refuse(replies.NEED_MAIL)
    ready["BDAT"] = _refuse(replies.NEED_MAIL)
    for verb in _ANY_TIME:
        greeted[verb] = _run(verb)
    mail = dict(ready)
    mail["MAIL"] = _refuse(replies.NESTED_MAIL)
    mail["RCPT"] = _run("RCPT")
    mail["DATA"] = _refuse(replies.NO_VALID_RECIPIENTS)  # RFC 5321 §3.3: 554 (or 503)
    mail["BDAT"] = _refuse(replies.NO_VALID_RECIPIENTS)
    mail["AUTH"] = _refuse(replies.AUTH_IN_TRANSACTION)  # RFC 4954 §4
    rcpt = dict(mail)
    rcpt["DATA"] = _run("DATA")
    rcpt["BDAT"] = _run("BDAT")
    chunking = dict(rcpt)
    chunking["DATA"] = _refuse(replies.DATA_AFTER_BDAT)  # RFC 3030 §2: no mixing
    return {
        State.GREETED: greeted,
        State.READY: ready,
        State.MAIL: mail,
        State.RCPT: rcpt,
        State.CHUNKING: chunking,
    }


ALLOWED: MappingProxyType[State, MappingProxyType[str, Rule]] = MappingProxyType(
    {state: MappingProxyType(rules) for state, rules in _table().items()}
)
"""state -> verb -> :class:`Rule`, for every command state and every verb in :data:`VERBS`."""


class Outcome(enum.Enum):
    """How the server answered an event, as far as the order of the session is concerned."""

    ACCEPTED = "accepted"  # 2xx
    CONTINUE = "continue"  # 3xx: 334 (SASL challenge)
    REFUSED = "refused"  # 4xx, 5xx


def outcome_of(reply: Reply) -> Outcome:
    code = reply.code
    if code < 300:
        return Outcome.ACCEPTED
    if code < 400:
        return Outcome.CONTINUE
    return Outcome.REFUSED


# event type -> state the event was raised in -> outcome -> next state. A missing outcome
# keeps the state. ``AuthRequest``/``AuthResponse`` are only raised in READY (AUTH is refused
# in a transaction, and before HELO) and return there unless the exchange continues.
_HELO_ACCEPTED = {state: {Outcome.ACCEPTED: State.READY} for state in COMMAND_STATES}
_AUTH = {
    State.READY: {
        Outcome.CONTINUE: State.AUTH_CHALLENGE,
    },
    State.AUTH_CHALLENGE: {
        Outcome.ACCEPTED: State.READY,
        Outcome.REFUSED: State.READY,
        Outcome.CONTINUE: State.AUTH_CHALLENGE,
    },
}
_END = {Outcome.ACCEPTED: State.READY, Outcome.REFUSED: State.READY}
AFTER_REPLY: dict[type, dict[State, dict[Outcome, State]]] = {
    # RFC 5321 §4.1.4: an accepted HELO/EHLO clears the transaction "as if RSET".
    events.Helo: _HELO_ACCEPTED,
    events.MailFrom: {State.READY: {Outcome.ACCEPTED: State.MAIL}},
    events.RcptTo: {
        State.MAIL: {Outcome.ACCEPTED: State.RCPT},
        State.RCPT: {},
        State.CHUNKING: {},
    },
    # End of data, whatever the answer, ends the transaction (RFC 5321 §4.1.1.4).
    events.MessageComplete: {State.RCPT: _END, State.CHUNKING: _END},
    events.AuthRequest: _AUTH,
    events.AuthResponse: _AUTH,
    events.Vrfy: {state: {} for state in COMMAND_STATES},
}
"""event type -> state it was raised in -> outcome of the reply -> next state."""


class Move(enum.Enum):
    """The core's own moves, which are not replies to an event."""

    GREETING_220 = "greeting 220"
    GREETING_554 = "greeting 554"
    START_DATA = "354 to DATA"
    END_OF_DATA = "end of data"  # the message waits for the server's reply
    START_CHUNK = "BDAT chunk follows"
    CHUNK_READ = "BDAT chunk read"  # a non-LAST chunk was accepted
    ABORT_MESSAGE = "message refused"  # content broke a rule: 5xx sent, transaction gone
    RESET = "RSET"
    STARTTLS = "220 to STARTTLS"
    TLS_ESTABLISHED = "TLS established"
    AUTH_CANCELLED = "SASL exchange cancelled"  # "*" or bad base64 in answer to a 334


def _moves() -> dict[tuple[State, Move], State]:
    moves = {
        (State.BEFORE_GREETING, Move.GREETING_220): State.GREETED,
        (State.BEFORE_GREETING, Move.GREETING_554): State.REJECTING,
        (State.RCPT, Move.START_DATA): State.DATA,
        (State.DATA, Move.END_OF_DATA): State.RCPT,
        (State.DATA, Move.ABORT_MESSAGE): State.READY,
        (State.BDAT, Move.END_OF_DATA): State.CHUNKING,
        (State.BDAT, Move.CHUNK_READ): State.CHUNKING,
        (State.BDAT, Move.ABORT_MESSAGE): State.READY,
        (State.AWAITING_TLS, Move.TLS_ESTABLISHED): State.GREETED,
        (State.AUTH_CHALLENGE, Move.AUTH_CANCELLED): State.READY,
    }
    for state in (State.READY, *TRANSACTION_STATES):
        # STARTTLS in a transaction ends it (RFC 3207 §4.2: the session starts afresh).
        moves[(state, Move.STARTTLS)] = State.AWAITING_TLS
    for state in COMMAND_STATES:
        # RSET keeps HELO (RFC 5321 §4.1.1.5): only the transaction goes.
        moves[(state, Move.RESET)] = State.GREETED if state is State.GREETED else State.READY
        # A BDAT chunk is read in every command state: a refused one is read and thrown away
        # (RFC 3030 §2), then the session is where it was.
        moves[(state, Move.START_CHUNK)] = State.BDAT
    return moves


TRANSITIONS: MappingProxyType[tuple[State, Move], State] = MappingProxyType(_moves())
"""(state, move) -> next state for the core's own moves."""
