"""AUTH (RFC 4954) in the client machine: PLAIN with its initial response (RFC 4616), LOGIN
through its two challenges, failures and cancellation, fed whole and one byte at a time."""

from __future__ import annotations

import base64

import pytest

from mailwarden.smtp.client import (
    AuthDone,
    ClientState,
    Envelope,
    LocalProtocolError,
    ServerClosing,
)

from .client_helpers import ClientRun

AUTH_EHLO = b"250-mx.example.net\r\n250-PIPELINING\r\n250 AUTH PLAIN LOGIN\r\n"


@pytest.fixture(params=["whole", "bytewise"])
def run(request: pytest.FixtureRequest) -> ClientRun:
    run = ClientRun(request.param)
    run.ready(AUTH_EHLO)
    return run


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def test_auth_plain_sends_the_initial_response(run: ClientRun) -> None:
    run.conn.auth("plain", "alice", "s3cret")
    assert run.sent() == b"AUTH PLAIN " + b64(b"\0alice\0s3cret") + b"\r\n"
    assert run.conn.state is ClientState.AUTH_SENT
    with pytest.raises(LocalProtocolError, match="AUTH_SENT"):
        run.conn.send_message(Envelope("s@x.org", ["a@x.net"]), b"x\r\n")
    (done,) = run.server(b"235 2.7.0 Authentication successful\r\n")
    assert isinstance(done, AuthDone) and done.accepted and done.mechanism == "PLAIN"
    assert run.conn.authenticated and run.conn.state is ClientState.READY
    # RFC 4954 §4: one successful AUTH per session.
    with pytest.raises(LocalProtocolError, match="already authenticated"):
        run.conn.auth("PLAIN", "alice", "s3cret")
    run.conn.send_message(Envelope("s@x.org", ["a@x.net"]), b"x\r\n")
    assert run.sent().startswith(b"MAIL FROM:<s@x.org>")


def test_auth_login_answers_the_two_challenges(run: ClientRun) -> None:
    run.conn.auth("LOGIN", "alice", "s3cret")
    assert run.sent() == b"AUTH LOGIN\r\n"
    assert run.server(b"334 VXNlcm5hbWU6\r\n") == []
    assert run.sent() == b64(b"alice") + b"\r\n"
    assert run.server(b"334 UGFzc3dvcmQ6\r\n") == []
    assert run.sent() == b64(b"s3cret") + b"\r\n"
    (done,) = run.server(b"235 2.7.0 ok\r\n")
    assert done.accepted and done.mechanism == "LOGIN" and run.conn.authenticated


def test_a_refused_auth_is_reported_and_the_session_goes_on(run: ClientRun) -> None:
    run.conn.auth("PLAIN", "alice", "wrong")
    run.sent()
    (done,) = run.server(b"535 5.7.8 Authentication credentials invalid\r\n")
    assert not done.accepted and done.reply.code == 535
    assert not run.conn.authenticated and run.conn.state is ClientState.READY
    run.conn.auth("LOGIN", "alice", "right")  # a failed AUTH may be tried again
    assert run.sent() == b"AUTH LOGIN\r\n"


def test_an_unexpected_challenge_is_cancelled_with_a_star(run: ClientRun) -> None:
    run.conn.auth("PLAIN", "alice", "s3cret")
    run.sent()
    assert run.server(b"334 \r\n") == []
    assert run.sent() == b"*\r\n"  # RFC 4954 §4: the client cancels
    (done,) = run.server(b"501 5.0.0 Authentication cancelled\r\n")
    assert not done.accepted and run.conn.state is ClientState.READY


def test_a_421_to_auth_closes(run: ClientRun) -> None:
    run.conn.auth("LOGIN", "alice", "s3cret")
    run.sent()
    (closing,) = run.server(b"421 4.7.0 Too many authentication failures\r\n")
    assert isinstance(closing, ServerClosing) and run.conn.state is ClientState.CLOSING


def test_auth_is_refused_locally_when_it_cannot_be_sent() -> None:
    run = ClientRun("whole")
    with pytest.raises(LocalProtocolError, match="CONNECTED"):
        run.conn.auth("PLAIN", "alice", "s3cret")
    run.ready(b"250-mx\r\n250 AUTH LOGIN\r\n")
    with pytest.raises(LocalProtocolError, match="AUTH PLAIN was not offered"):
        run.conn.auth("PLAIN", "alice", "s3cret")
    run.conn.send_message(Envelope("s@x.org", ["a@x.net"]), b"x\r\n")
    with pytest.raises(LocalProtocolError, match="TRANSACTION"):
        run.conn.auth("LOGIN", "alice", "s3cret")
    assert b"s3cret" not in run.sent()


def test_plain_credentials_with_a_nul_are_refused_without_echoing_them() -> None:
    run = ClientRun("whole")
    run.ready(AUTH_EHLO)
    with pytest.raises(LocalProtocolError) as caught:
        run.conn.auth("PLAIN", "alice", "sec\0ret")
    assert "sec" not in str(caught.value)
    assert run.sent() == b"" and run.conn.state is ClientState.READY
