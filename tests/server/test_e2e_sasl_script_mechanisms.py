"""SASL mechanisms written in the policy script (``SASL_MECHANISMS``, mailwarden.auth.custom),
spoken to over real sockets against ``mailwarden run``: offered in EHLO (after TLS unless safe
in clear), fed each client response, answered with 334 / 235 / 535, 454 on script errors."""

from __future__ import annotations

import base64
import signal
import ssl
from pathlib import Path

from tests.server.conftest import (
    RawClient,
    limits,
    only_message,
    send_transaction,
    wait_for_log,
    write_script,
)
from tests.support.node import run_cli, running_node, write_config

MECHANISMS = """
import asyncio
from mailwarden.auth.custom import Challenge, Failure, Success

USERS = {"alice": "wonderland"}

class Riddle:
    # Two rounds: the server asks for the name, then for the password.
    def __init__(self):
        self.name = None

    async def step(self, conn, response):
        if response is None or (self.name is None and response == b""):
            return Challenge(b"name?")
        if self.name is None:
            self.name = response.decode()
            return Challenge(b"password?")
        if USERS.get(self.name) == response.decode():
            return Success(self.name)
        return Failure()

class Counter:
    safe_in_clear = True  # sends nothing secret

    def __init__(self):
        self.steps = 0

    async def step(self, conn, response):
        self.steps += 1
        if response == b"done":
            return Success(f"counted-{self.steps}")
        return Challenge(str(self.steps).encode())

class Broken:
    safe_in_clear = True

    async def step(self, conn, response):
        if response == b"raise":
            raise RuntimeError("the mechanism broke")
        if response == b"junk":
            return "not an answer"
        if response == b"slow":
            await asyncio.sleep(30)
        if response == b"nobody":
            return Success("")
        return Challenge(b"again")

SASL_MECHANISMS = {"X-RIDDLE": Riddle, "X-COUNT": Counter, "X-BROKEN": Broken}
"""

UNTRUSTED = "trusted_networks = []\n"


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def decoded(reply_text: str) -> bytes:
    return base64.b64decode(reply_text)


def auth_line(lines: tuple[str, ...]) -> str | None:
    return next((line for line in lines if line.startswith("AUTH")), None)


def test_offered_after_tls_unless_safe_in_clear(
    tmp_path: Path, tls_keys: str, client_context: ssl.SSLContext
) -> None:
    server = tls_keys + write_script(tmp_path, MECHANISMS)
    with running_node(tmp_path, server=server) as node, RawClient(node.port) as client:
        client.greeting()
        assert auth_line(client.ehlo().lines) == "AUTH X-COUNT X-BROKEN"
        reply = client.cmd("AUTH X-RIDDLE")
        assert (reply.code, reply.enhanced) == (538, "5.7.11"), reply
        assert client.cmd("STARTTLS").code == 220
        client.starttls(client_context)
        assert auth_line(client.ehlo().lines) == "AUTH PLAIN LOGIN X-RIDDLE X-COUNT X-BROKEN"


def test_multi_round_success_lets_the_client_relay(
    tmp_path: Path, tls_keys: str, client_context: ssl.SSLContext
) -> None:
    server = tls_keys + write_script(tmp_path, MECHANISMS) + UNTRUSTED
    with running_node(tmp_path, server=server) as node, RawClient(node.port) as client:
        client.greeting()
        client.ehlo()
        assert client.cmd("STARTTLS").code == 220
        client.starttls(client_context)
        client.ehlo()
        reply = client.cmd("AUTH x-riddle")  # mechanism names are case-insensitive
        assert reply.code == 334 and decoded(reply.text) == b"name?"
        reply = client.cmd(b64("alice"))
        assert reply.code == 334 and decoded(reply.text) == b"password?"
        reply = client.cmd(b64("wonderland"))
        assert (reply.code, reply.enhanced) == (235, "2.7.0"), reply
        reply = send_transaction(
            client, "alice@example.org", ["bob@far.example"], b"Subject: x\r\n\r\nx\r\n"
        )
        assert reply.code == 250, reply
    assert only_message(node).auth == {"username": "alice", "mechanism": "X-RIDDLE"}


def test_failure_cancel_and_bad_base64(
    tmp_path: Path, tls_keys: str, client_context: ssl.SSLContext
) -> None:
    server = tls_keys + write_script(tmp_path, MECHANISMS)
    with running_node(tmp_path, server=server) as node, RawClient(node.port) as client:
        client.greeting()
        client.ehlo()
        assert client.cmd("STARTTLS").code == 220
        client.starttls(client_context)
        client.ehlo()
        # An initial response skips the first challenge (RFC 4954 §4).
        assert decoded(client.cmd(f"AUTH X-RIDDLE {b64('alice')}").text) == b"password?"
        reply = client.cmd(b64("looking-glass"))
        assert (reply.code, reply.enhanced) == (535, "5.7.8"), reply
        assert client.cmd("AUTH X-RIDDLE").code == 334
        reply = client.cmd("*")
        assert (reply.code, reply.enhanced) == (501, "5.0.0"), reply
        assert client.cmd("AUTH X-RIDDLE").code == 334
        reply = client.cmd("not base64!")
        assert (reply.code, reply.enhanced) == (501, "5.5.2"), reply
        # After all that the session still works, and a fresh exchange starts from scratch.
        assert client.cmd("AUTH X-RIDDLE =").code == 334
        assert client.cmd(b64("alice")).code == 334
        assert client.cmd(b64("wonderland")).code == 235


def test_state_belongs_to_one_exchange(tmp_path: Path) -> None:
    server = write_script(tmp_path, MECHANISMS)
    with running_node(tmp_path, server=server) as node:
        for _ in range(2):
            with RawClient(node.port) as client:
                client.greeting()
                client.ehlo()
                assert decoded(client.cmd("AUTH X-COUNT").text) == b"1"
                assert decoded(client.cmd(b64("more")).text) == b"2"
                assert client.cmd("*").code == 501
                # The cancelled exchange's instance is gone: counting starts again.
                assert decoded(client.cmd("AUTH X-COUNT").text) == b"1"
                reply = client.cmd(b64("done"))
                assert reply.code == 235, reply


def test_script_errors_are_454(tmp_path: Path) -> None:
    server = write_script(tmp_path, MECHANISMS)
    body = limits(hook_timeout=1)
    with running_node(tmp_path, server=server, body=body) as node, RawClient(node.port) as client:
        client.greeting()
        client.ehlo()
        for response in ("raise", "junk", "slow", "nobody"):
            reply = client.cmd(f"AUTH X-BROKEN {b64(response)}")
            assert (reply.code, reply.enhanced) == (454, "4.7.0"), (response, reply)
        # A mechanism that never stops challenging is cut off after ten rounds.
        replies = [client.cmd("AUTH X-BROKEN")]
        while replies[-1].code == 334:
            replies.append(client.cmd(b64("x")))
        assert len(replies) == 10
        assert (replies[-1].code, replies[-1].enhanced) == (454, "4.7.0")
        assert client.cmd("NOOP").code == 250
    log = node.log()
    assert "SASL mechanism X-BROKEN raised" in log and "the mechanism broke" in log
    assert "SASL mechanism X-BROKEN answered str" in log
    assert "hook SASL X-BROKEN timed out" in log
    assert "past the limit of 10 rounds" in log


def test_a_bad_mechanism_table_is_a_load_error(tmp_path: Path) -> None:
    write_script(
        tmp_path,
        """
        class Plain:
            async def step(self, conn, response):
                return None

        SASL_MECHANISMS = {"PLAIN": Plain}
        """,
    )
    config = write_config(tmp_path, 2525, server='script = "policy.py"\n')
    done = run_cli("config", "check", "--config", str(config))
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "policy.py:6:" in output and "PLAIN is built in" in output


def test_a_reload_changes_what_is_announced(tmp_path: Path) -> None:
    server = write_script(tmp_path, MECHANISMS)
    with running_node(tmp_path, server=server) as node:
        with RawClient(node.port) as client:
            client.greeting()
            assert auth_line(client.ehlo().lines) == "AUTH X-COUNT X-BROKEN"
        write_script(tmp_path, MECHANISMS.replace('"X-BROKEN": Broken', '"X-NEW": Broken'))
        node.signal(signal.SIGHUP)
        wait_for_log(node, "configuration and scripts reloaded")
        with RawClient(node.port) as client:
            client.greeting()
            assert auth_line(client.ehlo().lines) == "AUTH X-COUNT X-NEW"
            assert client.cmd("AUTH X-BROKEN").code == 504
            assert client.cmd(f"AUTH X-NEW {b64('raise')}").code == 454
