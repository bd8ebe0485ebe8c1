"""The transition table (states.py) as the client sees it, and the core's own-side errors.

Every command state × every command gives either the command's own answer or the documented
out-of-order reply; EHLO advertises exactly the optional commands the dispatcher lets through;
calling the core out of turn raises ``LocalProtocolError`` naming the state.
"""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailwarden.smtp import replies
from mailwarden.smtp.protocol import LocalProtocolError, ProtocolSettings, SmtpConnection
from mailwarden.smtp.replies import Reply
from mailwarden.smtp.states import ALLOWED, COMMAND_STATES, VERBS, State

from .conftest import Driver
from .helpers import GREETING, TLS, ParsedReply, Segment, drive, session

OPEN = ProtocolSettings(tls_available=True, auth_requires_tls=False)
_CREDENTIALS = base64.b64encode(b"\x00user\x00secret").decode()

# How a client reaches each command state.
REACH: dict[State, tuple[bytes, ...]] = {
    State.GREETED: (),
    State.READY: (session("EHLO c.example"),),
    State.MAIL: (session("EHLO c.example", "MAIL FROM:<a@example.org>"),),
    State.RCPT: (
        session("EHLO c.example", "MAIL FROM:<a@example.org>", "RCPT TO:<b@example.net>"),
    ),
    State.CHUNKING: (
        session("EHLO c.example", "MAIL FROM:<a@example.org>", "RCPT TO:<b@example.net>")
        + b"BDAT 3\r\nabc",
    ),
}

# One well-formed instance of each command, and the first reply code when its handler runs.
COMMAND_LINE = {
    "EHLO": "EHLO c.example",
    "HELO": "HELO c.example",
    "MAIL": "MAIL FROM:<a@example.org>",
    "RCPT": "RCPT TO:<b@example.net>",
    "DATA": "DATA",
    "BDAT": "BDAT 0",
    "RSET": "RSET",
    "NOOP": "NOOP",
    "QUIT": "QUIT",
    "VRFY": "VRFY someone",
    "HELP": "HELP",
    "STARTTLS": "STARTTLS",
    "AUTH": f"AUTH PLAIN {_CREDENTIALS}",
}
HANDLED_CODE = {
    "EHLO": 250,
    "HELO": 250,
    "MAIL": 250,
    "RCPT": 250,
    "DATA": 354,
    "BDAT": 250,
    "RSET": 250,
    "NOOP": 250,
    "QUIT": 221,
    "VRFY": 252,
    "HELP": 214,
    "STARTTLS": 220,
    "AUTH": 235,
}

# The documented out-of-order replies (RFC 5321 §4.1.4 and §3.3, RFC 3030 §2, RFC 4954 §4);
# every (state, command) not listed runs the command.
_MAIL_COMMANDS = ("MAIL", "RCPT", "DATA", "BDAT", "STARTTLS", "AUTH")
OUT_OF_ORDER: dict[tuple[State, str], Reply] = {
    **{(State.GREETED, verb): replies.HELO_FIRST for verb in _MAIL_COMMANDS},
    (State.READY, "RCPT"): replies.NEED_MAIL,
    (State.READY, "DATA"): replies.NEED_MAIL,
    (State.READY, "BDAT"): replies.NEED_MAIL,
    **{(state, "MAIL"): replies.NESTED_MAIL for state in (State.MAIL, State.RCPT, State.CHUNKING)},
    **{
        (state, "AUTH"): replies.AUTH_IN_TRANSACTION
        for state in (State.MAIL, State.RCPT, State.CHUNKING)
    },
    (State.MAIL, "DATA"): replies.NO_VALID_RECIPIENTS,
    (State.MAIL, "BDAT"): replies.NO_VALID_RECIPIENTS,
    (State.CHUNKING, "DATA"): replies.DATA_AFTER_BDAT,
}


def _after(smtp: Driver, prefix: tuple[Segment, ...], line: str) -> bytes:
    """What the server answers to ``line`` once the client is at ``prefix``."""
    before = smtp(*prefix, settings=OPEN).output
    after = smtp(*prefix, session(line), settings=OPEN).output
    assert after.startswith(before)
    return after[len(before) :]


def test_the_table_covers_every_command_state_and_every_command() -> None:
    assert set(ALLOWED) == set(COMMAND_STATES)
    for state in COMMAND_STATES:
        assert tuple(ALLOWED[state]) == VERBS
        for verb, rule in ALLOWED[state].items():
            assert rule.refusal == OUT_OF_ORDER.get((state, verb)), (state, verb)


@pytest.mark.parametrize("state", COMMAND_STATES, ids=lambda s: s.value)
@pytest.mark.parametrize("verb", VERBS)
def test_every_state_and_command(smtp: Driver, state: State, verb: str) -> None:
    answer = _after(smtp, REACH[state], COMMAND_LINE[verb])
    refusal = OUT_OF_ORDER.get((state, verb))
    if refusal is not None:
        assert answer == refusal.encode()
    else:
        assert int(answer[:3]) == HANDLED_CODE[verb], answer


def test_out_of_order_replies_are_bad_sequence_or_their_rfc_code() -> None:
    # RFC 5321 §4.1.4 and §3.3: 503 5.5.1, or 554 for DATA without a valid recipient.
    for refusal in OUT_OF_ORDER.values():
        assert (refusal.code, refusal.enhanced) in ((503, "5.5.1"), (554, "5.5.1"))


def test_a_refused_bdat_chunk_is_read_and_the_state_kept(smtp: Driver) -> None:
    t = smtp(session("EHLO c.example") + b"BDAT 4\r\nRSET" + session("MAIL FROM:<a@b.example>"))
    assert t.codes == [220, 250, 503, 250]
    assert t.conn.state is State.MAIL


# --- EHLO advertises exactly what the dispatcher lets through ------------------------------

_OPTIONAL = {"STARTTLS": "STARTTLS", "AUTH": f"AUTH PLAIN {_CREDENTIALS}"}
_NOT_OFFERED = {
    replies.TLS_NOT_AVAILABLE,
    replies.TLS_ALREADY_ACTIVE,
    replies.AUTH_NOT_AVAILABLE,
    replies.AUTH_NEEDS_TLS,
}


@settings(max_examples=60, deadline=None)
@given(
    tls_available=st.booleans(),
    mechanisms=st.sampled_from([(), ("PLAIN",), ("PLAIN", "LOGIN")]),
    auth_requires_tls=st.booleans(),
    after_tls=st.booleans(),
)
def test_ehlo_advertisement_and_table_agree(
    tls_available: bool, mechanisms: tuple[str, ...], auth_requires_tls: bool, after_tls: bool
) -> None:
    config = ProtocolSettings(
        tls_available=tls_available,
        auth_mechanisms=mechanisms,
        auth_requires_tls=auth_requires_tls,
    )
    prefix: tuple[Segment, ...] = (session("EHLO c.example"),)
    if after_tls and tls_available:
        prefix = (session("EHLO c.example", "STARTTLS"), TLS, session("EHLO c.example"))
    for verb, line in _OPTIONAL.items():
        t = drive(*prefix, session(line), settings=config)
        ehlo = [r for r in t.replies if r.code == 250 and len(r.lines) > 1][-1]
        advertised = any(keyword.split(" ")[0] == verb for keyword in ehlo.lines[1:])
        answer = t.replies[-1]
        refused_as_not_offered = any(
            answer.code == r.code and answer.lines == (f"{r.enhanced} {r.text}",)
            for r in _NOT_OFFERED
        )
        assert advertised != refused_as_not_offered, (verb, ehlo.lines, answer)
        if advertised:
            # Every advertised command is also one the table knows (and runs in READY).
            assert ALLOWED[State.READY][verb].handler is not None
    assert "BDAT" in VERBS and ALLOWED[State.RCPT]["BDAT"].handler is not None  # CHUNKING


# --- our own misuse: LocalProtocolError naming the state -----------------------------------


def test_send_reply_with_nothing_awaited_names_the_state() -> None:
    conn = SmtpConnection(ProtocolSettings())
    conn.send_greeting(GREETING)
    with pytest.raises(LocalProtocolError, match=r"no event awaiting a reply.*greeted") as error:
        conn.send_reply(replies.OK)
    assert error.value.state is State.GREETED
    assert isinstance(error.value, RuntimeError)  # callers that caught RuntimeError still do


def test_accept_before_the_greeting_names_the_state() -> None:
    conn = SmtpConnection(ProtocolSettings())
    with pytest.raises(LocalProtocolError, match="before-greeting"):
        conn.accept()


def test_tls_established_without_starttls_names_the_state() -> None:
    conn = SmtpConnection(ProtocolSettings())
    conn.send_greeting(GREETING)
    conn.receive_data(b"EHLO c.example\r\n")
    conn.next_event()
    conn.accept()
    with pytest.raises(LocalProtocolError, match=r"without STARTTLS.*ready"):
        conn.tls_established()


def test_second_greeting_names_the_state() -> None:
    conn = SmtpConnection(ProtocolSettings())
    conn.send_greeting(GREETING)
    with pytest.raises(LocalProtocolError, match=r"greeting already sent.*greeted"):
        conn.send_greeting(GREETING)


def test_peer_misuse_stays_a_reply() -> None:
    conn = SmtpConnection(ProtocolSettings())
    conn.send_greeting(GREETING)
    conn.data_to_send()
    conn.receive_data(b"DATA\r\n")
    conn.next_event()
    assert conn.data_to_send() == replies.HELO_FIRST.encode()


def test_a_malformed_sasl_answer_leaves_the_challenge_standing(smtp: Driver) -> None:
    def decide(conn: SmtpConnection, event: object) -> None:
        if event.__class__.__name__ == "AuthRequest":
            conn.send_auth_challenge(b"")
        else:
            conn.accept()

    t = smtp(
        session("EHLO c.example", "AUTH PLAIN") + b"bare-lf\n" + session(_CREDENTIALS),
        settings=OPEN,
        decide=decide,
    )
    assert t.codes == [220, 250, 334, 501, 235]
    assert t.conn.state is State.READY and t.conn.authenticated


def test_starttls_not_offered_comes_before_order_auth_order_comes_first(smtp: Driver) -> None:
    # STARTTLS the listener cannot do is 454 whatever the state (RFC 3207 §4); AUTH keeps
    # RFC 4954 §4's order: HELO first, then whether a mechanism is offered at all.
    t = smtp(
        session("STARTTLS", "AUTH PLAIN", "EHLO c.example", "AUTH PLAIN"),
        settings=ProtocolSettings(auth_mechanisms=()),
    )
    assert t.replies[1:] == [
        ParsedReply(454, ("4.7.0 TLS not available",)),
        ParsedReply(503, ("5.5.1 Send HELO or EHLO first",)),
        t.replies[3],
        ParsedReply(503, ("5.5.1 AUTH not available",)),
    ]
