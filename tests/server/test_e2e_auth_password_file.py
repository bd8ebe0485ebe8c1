"""AUTH PLAIN and LOGIN checked against a listener's ``auth_password_file`` (argon2 hashes),
by real clients against ``mailwarden run``; the file's changes are seen without a restart, and
no password reaches the log."""

from __future__ import annotations

import base64
import signal
import smtplib
import ssl
from pathlib import Path

import pytest
from tests.server.conftest import (
    RawClient,
    only_message,
    running_edited_node,
    wait_for_log,
    write_script,
)
from tests.support.node import Node, run_cli, running_node

from mailwarden.auth.passwords import hash_password, set_user

PASSWORD = "Wonderland-7f3a9"
SERVER = 'auth_password_file = "passwords"\ntrusted_networks = []\n'


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "passwords"
    set_user(path, "alice", hash_password(PASSWORD))
    return path


def login(node: Node, context: ssl.SSLContext, user: str, password: str, mechanism: str) -> int:
    with smtplib.SMTP("127.0.0.1", node.port, timeout=15) as smtp:
        smtp.starttls(context=context)
        smtp.ehlo("client.example")
        smtp.user, smtp.password = user, password
        authobject = smtp.auth_plain if mechanism == "PLAIN" else smtp.auth_login
        try:
            code, _ = smtp.auth(mechanism, authobject, initial_response_ok=mechanism == "PLAIN")
        except smtplib.SMTPAuthenticationError as error:
            return error.smtp_code
        return code


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_password_file_without_auth_hook(
    tmp_path: Path,
    tls_keys: str,
    password_file: Path,
    client_context: ssl.SSLContext,
    mechanism: str,
) -> None:
    with running_node(tmp_path, server=tls_keys + SERVER) as node:
        assert login(node, client_context, "alice", PASSWORD, mechanism) == 235
        assert login(node, client_context, "alice", "wrong", mechanism) == 535
        assert login(node, client_context, "mallory", PASSWORD, mechanism) == 535
        with smtplib.SMTP("127.0.0.1", node.port, timeout=15) as smtp:
            smtp.starttls(context=client_context)
            smtp.login("alice", PASSWORD)
            smtp.sendmail(
                "alice@example.org", ["bob@elsewhere.example"], b"Subject: x\r\n\r\nx\r\n"
            )
    # smtplib's login() picks PLAIN, the first it knows of those offered.
    assert only_message(node).auth == {"username": "alice", "mechanism": "PLAIN"}


def test_changed_file_is_read_without_reload(
    tmp_path: Path, tls_keys: str, password_file: Path, client_context: ssl.SSLContext
) -> None:
    with running_node(tmp_path, server=tls_keys + SERVER) as node:
        assert login(node, client_context, "bob", "b0b-secret", "PLAIN") == 535
        done = run_cli("auth", "set", str(password_file), "bob", stdin="b0b-secret\n")
        assert done.returncode == 0, done.stderr
        assert login(node, client_context, "bob", "b0b-secret", "PLAIN") == 235
        assert login(node, client_context, "alice", PASSWORD, "PLAIN") == 235


def test_auth_hook_can_ask_the_password_file(
    tmp_path: Path, tls_keys: str, password_file: Path, client_context: ssl.SSLContext
) -> None:
    script = write_script(
        tmp_path,
        """
        from mailwarden.policy.actions import Accept, Reject

        async def auth(conn, credentials):
            if credentials.username == "alice" and conn.remote_ip != "127.0.0.1":
                raise Reject(535, "5.7.8", "alice only from localhost")
            if await credentials.password_file_matches():
                return Accept()
            return None
        """,
    )
    with running_node(tmp_path, server=tls_keys + SERVER + script) as node:
        assert login(node, client_context, "alice", PASSWORD, "LOGIN") == 235
        assert login(node, client_context, "alice", "nope", "LOGIN") == 535


def test_no_password_in_the_log(
    tmp_path: Path, tls_keys: str, password_file: Path, client_context: ssl.SSLContext
) -> None:
    # A script that logs what it gets, as operators do while debugging.
    script = write_script(
        tmp_path,
        """
        import logging

        async def auth(conn, credentials):
            logging.getLogger("policy").warning("auth attempt: %r", credentials)
            raise RuntimeError(f"debugging {credentials!r}")
        """,
    )
    debug = lambda text: text.replace("[node]\n", '[node]\nlog_level = "debug"\n', 1)  # noqa: E731
    with running_edited_node(tmp_path, debug, server=tls_keys + SERVER + script) as node:
        assert login(node, client_context, "alice", PASSWORD, "PLAIN") == 454
        assert login(node, client_context, "alice", PASSWORD, "LOGIN") == 454
    log = node.log()
    assert "auth attempt: Credentials(mechanism='PLAIN', username='alice'" in log
    encoded = [
        base64.b64encode(f"\0alice\0{PASSWORD}".encode()),
        base64.b64encode(PASSWORD.encode()),
    ]
    assert PASSWORD not in log
    assert not any(text.decode() in log for text in encoded)


def test_unusable_password_file_stops_the_start(tmp_path: Path, tls_keys: str) -> None:
    (tmp_path / "passwords").write_text("alice:plaintext\n")
    with running_node(tmp_path, server=tls_keys + SERVER, wait=False) as node:
        assert node.process.wait(timeout=30) != 0
    log = node.log()
    assert "auth_password_file" in log and "passwords:1: expected an argon2 hash" in log


def test_raw_plain_exchange_with_password_file(
    tmp_path: Path, tls_keys: str, password_file: Path, client_context: ssl.SSLContext
) -> None:
    with running_node(tmp_path, server=tls_keys + SERVER) as node, RawClient(node.port) as client:
        client.greeting()
        client.ehlo()
        assert client.cmd("STARTTLS").code == 220
        client.starttls(client_context)
        assert "AUTH PLAIN LOGIN" in client.ehlo().lines
        token = base64.b64encode(f"\0alice\0{PASSWORD}".encode()).decode()
        reply = client.cmd(f"AUTH PLAIN {token}")
        assert (reply.code, reply.enhanced) == (235, "2.7.0"), reply


def test_sighup_switches_files_and_a_broken_one_is_refused(
    tmp_path: Path, tls_keys: str, password_file: Path, client_context: ssl.SSLContext
) -> None:
    other = tmp_path / "other-passwords"
    set_user(other, "carol", hash_password("c4rol-secret"))
    with running_node(tmp_path, server=tls_keys + SERVER) as node:
        assert login(node, client_context, "carol", "c4rol-secret", "PLAIN") == 535
        node.config_path.write_text(
            node.config_path.read_text().replace('"passwords"', '"other-passwords"')
        )
        node.signal(signal.SIGHUP)
        wait_for_log(node, "configuration and scripts reloaded")
        assert login(node, client_context, "carol", "c4rol-secret", "PLAIN") == 235
        assert login(node, client_context, "alice", PASSWORD, "PLAIN") == 535
        # A reload with a malformed file keeps what runs, and says which file and line.
        (tmp_path / "broken").write_text("carol:c4rol-secret\n")
        node.config_path.write_text(
            node.config_path.read_text().replace('"other-passwords"', '"broken"')
        )
        checked = node.mailwarden("config", "check")
        assert checked.returncode == 1
        assert "auth_password_file" in checked.stderr and "broken:1:" in checked.stderr
        node.signal(signal.SIGHUP)
        wait_for_log(node, "reload failed, keeping the running configuration")
        assert login(node, client_context, "carol", "c4rol-secret", "PLAIN") == 235
