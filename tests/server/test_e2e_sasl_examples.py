"""The SASL examples in examples/ as a listener's script, against ``mailwarden run``, with
real clients: swaks and smtplib for CRAM-MD5 (RFC 2195)."""

from __future__ import annotations

import base64
import hmac
import shutil
import smtplib
import subprocess
from pathlib import Path

import pytest
from tests.server.conftest import RawClient, only_message
from tests.support.node import Node, running_node

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
UNTRUSTED = "trusted_networks = []\n"


def example_server(tmp_path: Path, name: str, extra: str = "") -> str:
    shutil.copy(EXAMPLES / name, tmp_path / name)
    return f'script = "{name}"\n' + UNTRUSTED + extra


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
