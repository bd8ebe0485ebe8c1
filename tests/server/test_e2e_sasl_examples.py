"""The SASL examples in examples/ as a listener's script, against ``mailwarden run``, with
real clients: swaks and smtplib for CRAM-MD5 (RFC 2195), smtplib for X-TOTP (RFC 6238 codes
made by pyotp) and OAUTHBEARER (RFC 7628)."""

from __future__ import annotations

import base64
import hmac
import json
import shutil
import smtplib
import ssl
import subprocess
from pathlib import Path

import pyotp
import pytest
from tests.server.conftest import RawClient, only_message
from tests.support.node import Node, running_node

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
UNTRUSTED = "trusted_networks = []\n"


def example_server(tmp_path: Path, name: str, extra: str = "") -> str:
    shutil.copy(EXAMPLES / name, tmp_path / name)
    return f'script = "{name}"\n' + UNTRUSTED + extra


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def swaks(node: Node, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{node.port}", "--helo", "client.example", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


# --- sasl_cram_md5.py --------------------------------------------------------------------


def test_cram_md5_with_swaks(tmp_path: Path) -> None:
    with running_node(tmp_path, server=example_server(tmp_path, "sasl_cram_md5.py")) as node:
        done = swaks(
            node,
            *("--auth", "CRAM-MD5", "--auth-user", "alice", "--auth-password", "wonderland"),
            *("--from", "alice@example.org", "--to", "friend@elsewhere.example"),
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "<-  235 2.7.0 Authentication successful" in done.stdout
        assert " -> AUTH CRAM-MD5" in done.stdout
        refused = swaks(
            node,
            *("--auth", "CRAM-MD5", "--auth-user", "alice", "--auth-password", "looking-glass"),
            *("--from", "alice@example.org", "--to", "friend@elsewhere.example"),
        )
        assert refused.returncode != 0
        assert "535 5.7.8" in refused.stdout
    message = only_message(node)
    assert message.auth == {"username": "alice", "mechanism": "CRAM-MD5"}
    assert "wonderland" not in node.log()


def test_cram_md5_with_smtplib(tmp_path: Path) -> None:
    with (
        running_node(tmp_path, server=example_server(tmp_path, "sasl_cram_md5.py")) as node,
        smtplib.SMTP("127.0.0.1", node.port, timeout=15) as smtp,
    ):
        smtp.ehlo("client.example")
        # Offered before TLS: CRAM-MD5 sends only an HMAC of the password.
        assert smtp.esmtp_features["auth"].split() == ["CRAM-MD5"]
        smtp.user, smtp.password = "alice", "wonderland"
        code, text = smtp.auth("CRAM-MD5", smtp.auth_cram_md5)
        assert (code, text) == (235, b"2.7.0 Authentication successful")
        assert (
            smtp.sendmail(
                "alice@example.org", ["friend@elsewhere.example"], b"Subject: x\r\n\r\nx\r\n"
            )
            == {}
        )
    assert only_message(node).auth == {"username": "alice", "mechanism": "CRAM-MD5"}


@pytest.mark.parametrize(
    ("user", "password"), [("alice", "Wonderland"), ("bob", "wonderland"), ("", "wonderland")]
)
def test_cram_md5_refuses_wrong_answers(tmp_path: Path, user: str, password: str) -> None:
    with (
        running_node(tmp_path, server=example_server(tmp_path, "sasl_cram_md5.py")) as node,
        RawClient(node.port) as client,
    ):
        client.greeting()
        client.ehlo()
        reply = client.cmd("AUTH CRAM-MD5")
        assert reply.code == 334
        challenge = base64.b64decode(reply.text)
        assert challenge.startswith(b"<") and challenge.endswith(b">") and b"@" in challenge
        digest = hmac.new(password.encode(), challenge, "md5").hexdigest()
        reply = client.cmd(base64.b64encode(f"{user} {digest}".encode()).decode())
        assert (reply.code, reply.enhanced) == (535, "5.7.8"), reply
        # Each exchange gets its own challenge: an answer recorded earlier does not replay.
        again = client.cmd("AUTH CRAM-MD5")
        assert again.code == 334 and base64.b64decode(again.text) != challenge


# --- sasl_totp.py ------------------------------------------------------------------------

TOTP_SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"  # alice's, in the example


def starttls_smtplib(node: Node, context: ssl.SSLContext) -> smtplib.SMTP:
    smtp = smtplib.SMTP("127.0.0.1", node.port, timeout=15)
    smtp.ehlo("client.example")
    smtp.starttls(context=context)
    smtp.ehlo("client.example")
    return smtp


def totp_auth(smtp: smtplib.SMTP, user: str, code: str) -> int:
    try:
        return smtp.auth("X-TOTP", lambda challenge=None: f"\0{user}\0{code}")[0]
    except smtplib.SMTPAuthenticationError as error:
        return error.smtp_code


def test_totp_code_authenticates_once(
    tmp_path: Path, tls_keys: str, client_context: ssl.SSLContext
) -> None:
    server = tls_keys + example_server(tmp_path, "sasl_totp.py")
    code = pyotp.TOTP(TOTP_SECRET).now()
    wrong = f"{(int(code) + 1) % 1000000:06d}"
    with running_node(tmp_path, server=server) as node:
        with RawClient(node.port) as plain:
            plain.greeting()
            assert not any(line.startswith("AUTH") for line in plain.ehlo().lines)
        with starttls_smtplib(node, client_context) as smtp:
            assert smtp.esmtp_features["auth"].split() == ["PLAIN", "LOGIN", "X-TOTP"]
            assert totp_auth(smtp, "alice", wrong) == 535
            assert totp_auth(smtp, "alice", code) == 235
            smtp.sendmail(
                "alice@example.org", ["friend@elsewhere.example"], b"Subject: x\r\n\r\nx\r\n"
            )
        with starttls_smtplib(node, client_context) as smtp:
            # The same code again (a replay): refused, though it is still the current one.
            assert totp_auth(smtp, "alice", code) == 535
    assert only_message(node).auth == {"username": "alice", "mechanism": "X-TOTP"}


# --- sasl_oauthbearer.py -----------------------------------------------------------------

TOKEN = "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg=="  # alice@example.org's, in the example


def bearer_message(token: str, authzid: str = "alice@example.org") -> str:
    return f"n,a={authzid},\x01host=mx.test.example\x01port=25\x01auth=Bearer {token}\x01\x01"


def test_oauthbearer_with_smtplib(
    tmp_path: Path, tls_keys: str, client_context: ssl.SSLContext
) -> None:
    server = tls_keys + example_server(tmp_path, "sasl_oauthbearer.py")
    with running_node(tmp_path, server=server) as node:
        with starttls_smtplib(node, client_context) as smtp:
            code, _ = smtp.auth("OAUTHBEARER", lambda challenge=None: bearer_message(TOKEN))
            assert code == 235
            smtp.sendmail(
                "alice@example.org", ["friend@elsewhere.example"], b"Subject: x\r\n\r\nx\r\n"
            )
        with starttls_smtplib(node, client_context) as smtp:
            answers: list[bytes | None] = []

            def client(challenge: bytes | None = None) -> str:
                answers.append(challenge)
                return bearer_message("expired-token") if challenge is None else "\x01"

            with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
                smtp.auth("OAUTHBEARER", client)
            assert refused.value.smtp_code == 535
            # RFC 7628 §3.2.2: the error challenge is JSON with status, scope, configuration.
            error = json.loads(answers[1] or b"")
            assert error["status"] == "invalid_token"
            assert set(error) == {"status", "scope", "openid-configuration"}
    assert only_message(node).auth == {"username": "alice@example.org", "mechanism": "OAUTHBEARER"}
    assert TOKEN not in node.log()


def test_oauthbearer_raw_exchange(
    tmp_path: Path, tls_keys: str, client_context: ssl.SSLContext
) -> None:
    server = tls_keys + example_server(tmp_path, "sasl_oauthbearer.py")
    with running_node(tmp_path, server=server) as node, RawClient(node.port) as client:
        client.greeting()
        client.ehlo()
        assert client.cmd("STARTTLS").code == 220
        client.starttls(client_context)
        assert "AUTH PLAIN LOGIN OAUTHBEARER" in client.ehlo().lines
        # A token for alice used to act as someone else: the error challenge, then 535.
        message = bearer_message(TOKEN, authzid="bob@example.org")
        reply = client.cmd(f"AUTH OAUTHBEARER {b64(message)}")
        assert reply.code == 334
        assert json.loads(base64.b64decode(reply.text))["status"] == "invalid_token"
        reply = client.cmd(b64("\x01"))
        assert (reply.code, reply.enhanced) == (535, "5.7.8"), reply
        # Garbage is refused at once; no initial response gets an empty challenge first.
        reply = client.cmd(f"AUTH OAUTHBEARER {b64('not a gs2 header')}")
        assert reply.code == 535
        assert client.cmd("AUTH OAUTHBEARER").text == ""
        # No authorization identity (the token's user is meant), no host or port: fine too.
        reply = client.cmd(b64(f"n,,\x01auth=Bearer {TOKEN}\x01\x01"))
        assert (reply.code, reply.enhanced) == (235, "2.7.0"), reply
