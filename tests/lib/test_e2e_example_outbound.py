"""examples/outbound_relay.py end to end: the example (a small rate limit, a key file and a
hash list set at the top of the copy the node runs) as the script of a real ``mailwarden run``
listener that delivers to Postfix's smtp-sink; users, a rate-limit override and a DKIM key put
in the datastore with ``mailwarden datastore set``, as an operator does; clients speaking real
SMTP with AUTH PLAIN (smtplib). The delivered messages' DKIM signatures are checked by Perl's
Mail::DKIM (independent of dkimpy and of our code) against nsd publishing the public keys."""

from __future__ import annotations

import hashlib
import json
import re
import smtplib
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from tests.lib.test_dkim import _pem, _public_record
from tests.queue.delivery_support import FAST_RETRIES, node_config, route_to, wait_until
from tests.support.dns_server import DnsServer, dns_server
from tests.support.mail_dkim import perl_dkim_verify
from tests.support.node import Node, free_port, node_process
from tests.support.sink import Sink, smtp_sink

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "outbound_relay.py"
RATE_LIMIT = 2  # messages per user per hour, in the copy the node runs
OVERRIDE = 4  # frank's own limit, from the datastore
BLOCKED = b"%PDF-1.4 the quarterly figures nobody may send out\n"
USERS = {
    "alice@example.org": "alice's secret",
    "carol@example.org": "carol's secret",
    "bob@example.org": "bob's secret",
    # Each test sends as users of its own, so none is near a limit the others reached; the
    # rate-limit test's two users start from zero.
    "erin@example.org": "erin's secret",
    "frank@example.org": "frank's secret",
}


@dataclass
class Relay:
    node: Node
    sink: Sink
    nsd: DnsServer

    def datastore_set(self, *args: str) -> None:
        done = self.node.mailwarden("datastore", "set", *args)
        assert done.returncode == 0, done.stderr


def configured_example(settings: dict[str, str]) -> str:
    source = EXAMPLE.read_text()
    for name, value in settings.items():
        # A value on one line, or a dict literal over several.
        pattern = re.compile(rf"^{name}(: [^=]+)? = (\{{[^}}]*\}}|.*)$", re.MULTILINE)
        source, replaced = pattern.subn(f"{name} = {value}", source)
        assert replaced == 1, name
    return source


def password_hash(password: str) -> str:
    """What the example's docstring tells operators to run: ``python outbound_relay.py PW``."""
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), password], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    directory = tmp_path_factory.mktemp("outbound")
    # sign.test's key is a file named in DKIM_KEYS; other.test's is in the datastore. Both RSA:
    # Debian's Mail::DKIM, the independent verifier, does not verify Ed25519 signatures.
    file_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    stored_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (directory / "sign.test.pem").write_bytes(_pem(file_key))
    (directory / "blocked.sha256").write_text(
        f"# sha256sum output\n{hashlib.sha256(BLOCKED).hexdigest()}  figures.pdf\n"
    )
    zones = {
        "sign.test": f"out._domainkey IN TXT {_public_record(file_key)}\n",
        "other.test": f"db._domainkey IN TXT {_public_record(stored_key)}\n",
    }
    settings = {
        "RATE_LIMIT": str(RATE_LIMIT),
        "DKIM_KEYS": repr({"sign.test": ("out", str(directory / "sign.test.pem"))}),
        "BLOCKED_HASHES_FILE": repr(str(directory / "blocked.sha256")),
    }
    (directory / "outbound_relay.py").write_text(configured_example(settings))
    port = free_port()
    with dns_server(directory / "nsd", zones) as nsd, smtp_sink(directory) as sink:
        server = (
            'script = "outbound_relay.py"\n'
            "trusted_networks = []\n"
            'auth_mechanisms = ["PLAIN"]\n'
            "auth_requires_tls = false\n"  # loopback only, in a test
        )
        config = directory / "mailwarden.toml"
        config.write_text(node_config(port, server=server, body=route_to(sink.port) + FAST_RETRIES))
        with node_process(directory, config, port) as node:
            relay = Relay(node, sink, nsd)
            for user, password in USERS.items():
                relay.datastore_set("relay-users", user, password_hash(password), "--string")
            relay.datastore_set("relay-limits", "frank@example.org", str(OVERRIDE))
            pem = _pem(stored_key).decode()
            relay.datastore_set(
                "dkim-keys", "other.test", json.dumps({"selector": "db", "key": pem})
            )
            yield relay


def mail(sender: str, attachment: tuple[str, bytes] | None = None) -> bytes:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = "dave@remote.example"
    message["Subject"] = "figures"
    message["Date"] = "Thu, 03 Dec 2026 12:00:00 +0000"
    message["Message-ID"] = f"<{len(sender)}.figures@{sender.rpartition('@')[2]}>"
    message.set_content("Here they are.\n")
    if attachment is not None:
        name, content = attachment
        message.add_attachment(content, maintype="application", subtype="pdf", filename=name)
    return message.as_bytes().replace(b"\n", b"\r\n")


def submit(
    port: int, user: str | None, sender: str, data: bytes, recipient: str = "dave@remote.example"
) -> tuple[str, int, str]:
    """One transaction, logged in as ``user`` (None: no AUTH): the phase that answered last."""
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        client.ehlo("laptop.example.org")
        if user is not None:
            client.login(user, USERS[user])
        code, text = client.mail(sender)
        if code != 250:
            return "mail", code, text.decode()
        code, text = client.rcpt(recipient)
        if code != 250:
            return "rcpt", code, text.decode()
        code, text = client.data(data)
        return "data", code, text.decode()


def delivered(relay: Relay, marker: bytes) -> bytes:
    """The message holding ``marker`` as smtp-sink received it (CRLF line ends again)."""

    def find() -> bytes | None:
        for dump in relay.sink.messages():
            if marker in dump:
                return dump
        return None

    dump = wait_until(find, what=f"{marker!r} at smtp-sink")
    assert isinstance(dump, bytes)
    return dump[dump.index(b"DKIM-Signature:") :].replace(b"\n", b"\r\n")


def test_without_auth_nothing_is_relayed(relay: Relay) -> None:
    port, data = relay.node.port, mail("alice@sign.test")
    assert submit(port, None, "alice@sign.test", data) == (
        "mail",
        530,
        "5.7.0 Authentication required",
    )
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("laptop.example.org")
        with pytest.raises(smtplib.SMTPAuthenticationError) as wrong:
            client.login("alice@example.org", "not the password")
        assert wrong.value.smtp_code == 535


def test_authenticated_mail_is_dkim_signed_for_its_from_domain(relay: Relay) -> None:
    port = relay.node.port
    # Each user's first message: neither is near a limit yet.
    phase, code, text = submit(
        port, "alice@example.org", "alice@sign.test", mail("alice@sign.test")
    )
    assert (phase, code) == ("data", 250), text
    phase, code, text = submit(
        port, "carol@example.org", "carol@other.test", mail("carol@other.test")
    )
    assert (phase, code) == ("data", 250), text

    from_file = delivered(relay, b"From: alice@sign.test")
    assert from_file.startswith(
        b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=sign.test;"
    )
    assert perl_dkim_verify(from_file, relay.nsd) == ("pass", ["d=sign.test s=out pass"])

    from_datastore = delivered(relay, b"From: carol@other.test")
    assert b" s=db;" in from_datastore.split(b"\r\n\r\n", 1)[0]
    assert perl_dkim_verify(from_datastore, relay.nsd) == ("pass", ["d=other.test s=db pass"])


def test_a_listed_attachment_is_refused(relay: Relay) -> None:
    port = relay.node.port
    listed = mail("bob@other.test", ("figures.pdf", BLOCKED))
    assert submit(port, "bob@example.org", "bob@other.test", listed) == (
        "data",
        550,
        "5.7.1 Attachment figures.pdf is blocked by policy",
    )
    # The same file name with other content is not on the list.
    other = mail("bob@other.test", ("figures.pdf", BLOCKED + b"(draft)\n"))
    phase, code, text = submit(port, "bob@example.org", "bob@other.test", other)
    assert (phase, code) == ("data", 250), text


def test_the_rate_limit_defers_and_the_override_raises_it_for_one_user(relay: Relay) -> None:
    def codes(user: str, sender: str, tries: int) -> list[int]:
        return [submit(relay.node.port, user, sender, mail(sender))[1] for _ in range(tries)]

    assert codes("erin@example.org", "erin@sign.test", RATE_LIMIT + 1) == [250] * RATE_LIMIT + [451]
    # frank's override in the datastore: twice as many, then the same deferral.
    assert codes("frank@example.org", "frank@sign.test", OVERRIDE + 1) == [250] * OVERRIDE + [451]
    phase, code, text = submit(
        relay.node.port, "erin@example.org", "erin@sign.test", mail("erin@sign.test")
    )
    assert (phase, code) == ("mail", 451)
    assert text == "4.7.1 erin@example.org sent more than 2 messages in 3600 s, try again later"
