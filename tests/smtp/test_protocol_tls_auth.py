"""STARTTLS (RFC 3207) and AUTH (RFC 4954) at the protocol core."""

from __future__ import annotations

import base64

import pytest

from mailwarden.smtp import events, replies
from mailwarden.smtp.events import Event
from mailwarden.smtp.protocol import ProtocolSettings, SmtpConnection

from .conftest import Driver
from .helpers import ENVELOPE, TLS, Transcript, session

TLS_ON = ProtocolSettings(tls_available=True)
NO_TLS_NEEDED = ProtocolSettings(auth_requires_tls=False)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --- STARTTLS ------------------------------------------------------------------------------


def test_starttls_then_the_session_starts_afresh(smtp: Driver) -> None:
    t = smtp(
        session("EHLO c.example", "STARTTLS"),
        TLS,
        session(
            "MAIL FROM:<a@example.org>", "EHLO c.example", "STARTTLS", "MAIL FROM:<a@example.org>"
        ),
        settings=TLS_ON,
    )
    assert t.codes == [220, 250, 220, 503, 250, 503, 250]
    assert t.replies[2].lines == ("2.0.0 Ready to start TLS",)
    assert t.replies[3].lines == ("5.5.1 Send HELO or EHLO first",)
    assert t.replies[5].lines == ("5.5.1 TLS already active",)
    assert t.kinds() == ["Helo", "StartTls", "Helo", "MailFrom"]
    assert t.conn.tls_active


def test_plaintext_pipelined_after_starttls_is_discarded(smtp: Driver) -> None:
    """CVE-2011-0411: commands injected behind STARTTLS must not run inside TLS."""
    injected = session("MAIL FROM:<evil@example.org>", "RCPT TO:<victim@example.net>", "QUIT")
    t = smtp(
        session("EHLO c.example", "STARTTLS") + injected,
        injected,  # more plaintext arriving before the handshake finished
        TLS,
        session("EHLO c.example", "MAIL FROM:<a@example.org>"),
        settings=TLS_ON,
    )
    assert t.codes == [220, 250, 220, 250, 250]
    assert [str(e.path.address) for e in t.of(events.MailFrom)] == ["a@example.org"]  # type: ignore[attr-defined]
    assert not t.of(events.RcptTo) and not t.closed


def test_starttls_inside_a_transaction_resets_it(smtp: Driver) -> None:
    t = smtp(
        ENVELOPE + session("STARTTLS"),
        TLS,
        session("EHLO c.example", "RCPT TO:<b@example.net>"),
        settings=TLS_ON,
    )
    assert t.codes == [220, 250, 250, 250, 220, 250, 503]
    assert t.kinds()[3:5] == ["TransactionReset", "StartTls"]


@pytest.mark.parametrize(
    ("settings", "commands", "code"),
    [
        (ProtocolSettings(), ["EHLO c.example", "STARTTLS"], 454),
        (TLS_ON, ["EHLO c.example", "STARTTLS now"], 501),
        (TLS_ON, ["STARTTLS"], 503),
    ],
)
def test_refused_starttls(
    smtp: Driver, settings: ProtocolSettings, commands: list[str], code: int
) -> None:
    t = smtp(session(*commands, "NOOP"), settings=settings)
    assert t.codes[-2:] == [code, 250]
    assert not t.of(events.StartTls)


# auth_requires_tls off: requiring TLS must keep AUTH back on its own.
TLS_REQUIRED = ProtocolSettings(tls_available=True, tls_required=True, auth_requires_tls=False)


def test_tls_required_answers_530_to_everything_but_the_way_to_tls(smtp: Driver) -> None:
    """RFC 3207 §4: a listener requiring TLS (tls_client_certificate = "require") answers every
    command other than NOOP, EHLO, STARTTLS and QUIT with 530 until the handshake."""
    t = smtp(
        session(
            "EHLO c.example",
            "MAIL FROM:<a@example.org>",
            "RCPT TO:<b@example.org>",
            "DATA",
            "HELO c.example",
            "AUTH PLAIN AGFAYg==",
            "VRFY b",
            "NOOP",
            "STARTTLS",
        ),
        TLS,
        session("EHLO c.example", "MAIL FROM:<a@example.org>"),
        settings=TLS_REQUIRED,
    )
    assert t.codes == [220, 250, 530, 530, 530, 530, 530, 530, 250, 220, 250, 250]
    assert t.replies[2].lines == ("5.7.0 Must issue a STARTTLS command first",)
    before, after = t.replies[1].lines, t.replies[10].lines
    assert "STARTTLS" in before and not any(line.startswith("AUTH") for line in before)
    assert "AUTH PLAIN LOGIN" in after
    assert t.kinds() == ["Helo", "StartTls", "Helo", "MailFrom"]


# --- AUTH ----------------------------------------------------------------------------------

CREDENTIALS = b"\x00user\x00secret"


def check_credentials(conn: SmtpConnection, event: Event) -> None:
    """A SASL back end: PLAIN with CREDENTIALS, or LOGIN with user/secret."""
    if isinstance(event, events.AuthRequest):
        if event.mechanism == "LOGIN" and event.initial_response is None:
            conn.send_auth_challenge(b"Username:")
        elif event.mechanism == "PLAIN" and event.initial_response is None:
            conn.send_auth_challenge(b"")
        elif event.initial_response == CREDENTIALS:
            conn.accept()
        else:
            conn.send_reply(replies.AUTH_FAILED)
    elif isinstance(event, events.AuthResponse):
        if event.data == b"user":
            conn.send_auth_challenge(b"Password:")
        elif event.data in (b"secret", CREDENTIALS):
            conn.accept()
        else:
            conn.send_reply(replies.AUTH_FAILED)
    else:
        conn.accept()


def auth(*lines: str, settings: ProtocolSettings = NO_TLS_NEEDED, smtp: Driver) -> Transcript:
    return smtp(session("EHLO c.example", *lines), settings=settings, decide=check_credentials)


def test_auth_plain_with_initial_response(smtp: Driver) -> None:
    t = auth(f"AUTH PLAIN {b64(CREDENTIALS)}", "AUTH PLAIN", smtp=smtp)
    assert t.codes == [220, 250, 235, 503]
    assert t.replies[2].lines == ("2.7.0 Authentication successful",)
    assert t.replies[3].lines == ("5.5.1 Already authenticated",)
    assert t.of(events.AuthRequest) == [events.AuthRequest("PLAIN", CREDENTIALS)]
    assert t.conn.authenticated


def test_auth_login_challenge_flow(smtp: Driver) -> None:
    t = auth("auth login", b64(b"user"), b64(b"secret"), smtp=smtp)
    assert t.codes == [220, 250, 334, 334, 235]
    assert t.replies[2].lines == (b64(b"Username:"),)
    assert t.replies[3].lines == (b64(b"Password:"),)
    assert t.kinds() == ["Helo", "AuthRequest", "AuthResponse", "AuthResponse"]


def test_empty_initial_response_and_empty_challenge(smtp: Driver) -> None:
    t = auth("AUTH PLAIN =", "AUTH PLAIN", b64(CREDENTIALS), smtp=smtp)
    assert t.codes == [220, 250, 535, 334, 235]
    assert t.of(events.AuthRequest)[0] == events.AuthRequest("PLAIN", b"")
    assert t.replies[3].lines == ("",)


def test_star_cancels_the_exchange(smtp: Driver) -> None:
    t = auth("AUTH LOGIN", "*", f"AUTH PLAIN {b64(CREDENTIALS)}", smtp=smtp)
    assert t.codes == [220, 250, 334, 501, 235]
    assert t.replies[3].lines == ("5.0.0 Authentication cancelled",)


@pytest.mark.parametrize("line", ["AUTH PLAIN not*base64", "AUTH PLAIN AGVtYWls="])
def test_bad_base64_initial_response_is_501(smtp: Driver, line: str) -> None:
    t = auth(line, "NOOP", smtp=smtp)
    assert t.codes == [220, 250, 501, 250]
    assert t.replies[2].lines == ("5.5.2 Cannot decode base64 response",)
    assert not t.of(events.AuthRequest)


def test_bad_base64_answer_to_a_challenge_is_501(smtp: Driver) -> None:
    t = auth("AUTH LOGIN", "%%%", "NOOP", smtp=smtp)
    assert t.codes == [220, 250, 334, 501, 250]
    assert not t.of(events.AuthResponse)


def test_auth_refusals(smtp: Driver) -> None:
    assert smtp(session("AUTH PLAIN"), settings=NO_TLS_NEEDED).codes == [220, 503]
    in_transaction = smtp(ENVELOPE + session("AUTH PLAIN"), settings=NO_TLS_NEEDED)
    assert in_transaction.replies[-1].lines == ("5.5.1 AUTH not allowed during a mail transaction",)
    unknown = auth("AUTH CRAM-MD5", smtp=smtp)
    assert unknown.codes[-1] == 504
    off = smtp(
        session("EHLO c.example", "AUTH PLAIN"), settings=ProtocolSettings(auth_mechanisms=())
    )
    assert off.codes[-1] == 503


def test_auth_before_tls_is_538(smtp: Driver) -> None:
    t = smtp(session("EHLO c.example", f"AUTH PLAIN {b64(CREDENTIALS)}"), settings=TLS_ON)
    assert t.codes == [220, 250, 538]
    assert t.replies[2].lines == (
        "5.7.11 Encryption required for requested authentication mechanism",
    )
    after_tls = smtp(
        session("EHLO c.example", "STARTTLS"),
        TLS,
        session("EHLO c.example", f"AUTH PLAIN {b64(CREDENTIALS)}"),
        settings=TLS_ON,
        decide=check_credentials,
    )
    assert after_tls.codes == [220, 250, 220, 250, 235]


def test_repeated_failures_then_421(smtp: Driver) -> None:
    wrong = "AUTH PLAIN " + b64(b"\x00user\x00wrong")
    t = auth(
        wrong,
        wrong,
        wrong,
        "NOOP",
        settings=ProtocolSettings(auth_requires_tls=False, max_auth_failures=3),
        smtp=smtp,
    )
    assert t.codes == [220, 250, 535, 535, 535, 421]
    assert t.replies[-1].lines == ("4.7.0 Too many authentication failures",)
    assert t.conn.auth_failures == 3
    assert t.closed


def test_failure_delay_grows() -> None:
    conn = SmtpConnection(NO_TLS_NEEDED)
    assert conn.auth_failure_delay() == 0
    delays = []
    for failures in range(1, 6):
        conn.auth_failures = failures
        delays.append(conn.auth_failure_delay())
    assert delays == sorted(delays) and delays[0] > 0 and delays[-1] <= 8
