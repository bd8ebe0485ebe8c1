"""The example policy scripts in examples/: they load, and they decide what their docs promise.

Hooks are called through the same runner the server uses (a timeout, the allowed actions per
phase), with context objects built as the session builds them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import smtplib
import ssl
import time
from collections.abc import Iterator
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest
import trustme
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.support.node import running_node

from mailwarden import stats
from mailwarden.lib.stat import snapshot
from mailwarden.policy.actions import Accept, Defer, Discard, Hold, Queue, Reject
from mailwarden.policy.context import (
    AuthIdentity,
    Connection,
    Credentials,
    Helo,
    Message,
    Recipient,
    RecipientState,
    Sender,
    TlsInfo,
    Transaction,
    memory_body,
)
from mailwarden.policy.headers import Headers
from mailwarden.policy.runner import call_hook
from mailwarden.policy.script import PolicyScript, ScriptError, load_script

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

EXPECTED_HOOKS = {
    "allow_deny_lists.py": {"connect", "mail_from", "rcpt_to"},
    "connection_limit.py": {"connect", "disconnect"},
    "header_stamping.py": {"data"},
    "routing_metadata.py": {"rcpt_to", "data"},
    "auth_users.py": {"auth"},
    "count_client_certificates.py": {"helo"},
    "greylisting.py": {"rcpt_to"},  # end to end in tests/lib/test_e2e_greylisting.py
    "disclaimer.py": {"data"},
    # SASL mechanisms, no hooks; end to end in tests/server/test_e2e_sasl_examples.py
    "sasl_cram_md5.py": set(),
    "sasl_totp.py": set(),
    "sasl_oauthbearer.py": set(),
    # End to end in tests/lib/test_e2e_example_inbound.py and test_e2e_example_outbound.py.
    "inbound_filter.py": {"connect", "mail_from", "rcpt_to", "data"},
    "outbound_relay.py": {"auth", "mail_from", "data"},
}

EXPECTED_MECHANISMS = {
    "sasl_cram_md5.py": {"CRAM-MD5"},
    "sasl_totp.py": {"X-TOTP"},
    "sasl_oauthbearer.py": {"OAUTHBEARER"},
}

_connection_numbers = iter(range(1, 1_000_000))


def load(name: str) -> PolicyScript:
    """A fresh copy of an example (its own module state), as a reload would give."""
    return load_script(EXAMPLES / name)


async def decide(script: PolicyScript, hook: str, *args: Any) -> Any:
    """Call a hook as the server does; HookFailed (the client's 451) fails the test."""
    return await call_hook(script, hook, "test-connection", 10.0, *args)


def connection(remote_ip: str = "203.0.113.50", **fields: Any) -> Connection:
    return Connection(
        id=f"c{next(_connection_numbers)}",
        server_id="inbound",
        remote_ip=remote_ip,
        remote_port=40000,
        local_ip="192.0.2.1",
        local_port=25,
        helo_name=fields.pop("helo_name", "client.example.net"),
        esmtp=True,
        **fields,
    )


def transaction(sender: str = "someone@sender.example", *recipients: str) -> Transaction:
    return Transaction(
        id="18f2a4c0000001",
        sender=Sender(sender, {}),
        recipients=[Recipient(address, {}) for address in recipients],
    )


def message(header_block: bytes, body: bytes = b"Hello.\r\n") -> Message:
    return Message(Headers.parse(header_block), len(body), memory_body(body))


def wire(action: Reject | Defer) -> bytes:
    """What the client reads for a refusal (at MAIL, RCPT, DATA; connect may rewrite the code)."""
    return action.reply.encode()


@pytest.mark.parametrize("name", sorted(EXPECTED_HOOKS))
def test_every_example_loads_with_its_hooks(name: str) -> None:
    assert set(load(name).hooks) == EXPECTED_HOOKS[name]


@pytest.mark.parametrize("name", sorted(EXPECTED_MECHANISMS))
def test_sasl_examples_declare_their_mechanisms(name: str) -> None:
    assert set(load(name).mechanisms) == EXPECTED_MECHANISMS[name]


def test_every_example_is_covered_here() -> None:
    # A new example must be added to EXPECTED_HOOKS (and tested) to pass.
    shipped = {path.name for path in EXAMPLES.glob("*.py")} - {"benchmark_policy.py"}
    assert shipped == set(EXPECTED_HOOKS)


# --- allow_deny_lists.py ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "ip", ["198.51.100.9", "203.0.113.7", "::ffff:198.51.100.200", "2001:db8:bad::25"]
)
async def test_denied_networks_are_refused_at_connect(ip: str) -> None:
    action = await decide(load("allow_deny_lists.py"), "connect", connection(ip))
    assert isinstance(action, Reject)
    assert (action.reply.code, action.reply.enhanced) == (554, "5.7.1")


@pytest.mark.parametrize("ip", ["203.0.113.8", "198.51.101.1", "2001:db8:bad1::1", "not-an-ip"])
async def test_other_clients_get_the_greeting(ip: str) -> None:
    assert await decide(load("allow_deny_lists.py"), "connect", connection(ip)) is None


@pytest.mark.parametrize(
    "sender",
    ["spammer@bulk.example", "SPAMMER@Bulk.Example", "anyone@partner.example", "x@mx.spam.example"],
)
async def test_denied_senders_get_550_5_7_1(sender: str) -> None:
    script, conn = load("allow_deny_lists.py"), connection()
    await decide(script, "connect", conn)
    tx = transaction()
    action = await decide(script, "mail_from", conn, tx, Sender(sender, {}))
    assert isinstance(action, Reject)
    assert wire(action) == b"550 5.7.1 Sender address rejected: access denied\r\n"


@pytest.mark.parametrize(
    "sender",
    [
        "billing@partner.example",  # on the allow list, which beats the denied domain
        "",  # the null sender (bounces)
        "someone@spam.example",  # ".spam.example" is subdomains only
        "spammer@bulk.example.org",
    ],
)
async def test_other_senders_are_accepted(sender: str) -> None:
    script, conn = load("allow_deny_lists.py"), connection()
    action = await decide(script, "mail_from", conn, transaction(), Sender(sender, {}))
    assert action is None


async def test_allow_listed_network_skips_the_deny_lists() -> None:
    script, conn = load("allow_deny_lists.py"), connection("192.0.2.77")
    assert await decide(script, "connect", conn) is None
    tx = transaction()
    assert await decide(script, "mail_from", conn, tx, Sender("spammer@bulk.example", {})) is None
    denied = Recipient("noreply@example.com", {})
    assert await decide(script, "rcpt_to", conn, tx, denied) is None


async def test_denied_recipient_is_refused_and_others_accepted() -> None:
    script, conn = load("allow_deny_lists.py"), connection()
    tx = transaction()
    refused = await decide(script, "rcpt_to", conn, tx, Recipient("Noreply@Example.com", {}))
    assert isinstance(refused, Reject)
    assert wire(refused) == b"550 5.7.1 Recipient address rejected: access denied\r\n"
    assert await decide(script, "rcpt_to", conn, tx, Recipient("sales@example.com", {})) is None


async def test_an_edited_list_file_takes_effect_without_a_reload(tmp_path: Path) -> None:
    shutil.copy(EXAMPLES / "allow_deny_lists.py", tmp_path)
    shutil.copytree(EXAMPLES / "lists", tmp_path / "lists")
    script, conn = load_script(tmp_path / "allow_deny_lists.py"), connection()
    tx, newcomer = transaction(), Recipient("newcomer@example.com", {})
    assert await decide(script, "rcpt_to", conn, tx, newcomer) is None
    with open(tmp_path / "lists" / "denied_recipients.txt", "a") as file:
        file.write("newcomer@example.com\n")
    await asyncio.sleep(1.1)  # the list checks its file at most once a second
    refused = await decide(script, "rcpt_to", conn, tx, newcomer)
    assert isinstance(refused, Reject)
    assert wire(refused) == b"550 5.7.1 Recipient address rejected: access denied\r\n"


def test_a_typo_in_a_list_file_fails_the_load_naming_file_and_line(tmp_path: Path) -> None:
    shutil.copy(EXAMPLES / "allow_deny_lists.py", tmp_path)
    shutil.copytree(EXAMPLES / "lists", tmp_path / "lists")
    (tmp_path / "lists" / "denied_networks.txt").write_text("198.51.100.0/24\n203.0.113.300\n")
    with pytest.raises(ScriptError, match=r"lists/denied_networks.txt:2: "):
        load_script(tmp_path / "allow_deny_lists.py")


# --- connection_limit.py ---------------------------------------------------------------------


async def test_third_connection_from_one_ip_is_deferred_until_one_closes() -> None:
    script = load("connection_limit.py")
    first, second, third = (connection("203.0.113.9") for _ in range(3))
    assert await decide(script, "connect", first) is None
    assert await decide(script, "connect", second) is None

    refused = await decide(script, "connect", third)
    assert isinstance(refused, Defer)
    assert (refused.reply.code, refused.reply.enhanced) == (421, "4.7.0")
    # The server calls disconnect for the refused connection too: it must not free a slot.
    await decide(script, "disconnect", third)
    assert isinstance(await decide(script, "connect", connection("203.0.113.9")), Defer)

    await decide(script, "disconnect", first)
    assert await decide(script, "connect", connection("203.0.113.9")) is None


async def test_connection_limit_counts_each_ip_and_exempts_trusted_clients() -> None:
    script = load("connection_limit.py")
    for _ in range(2):
        assert await decide(script, "connect", connection("203.0.113.9")) is None
    assert await decide(script, "connect", connection("203.0.113.10")) is None
    for _ in range(5):
        assert await decide(script, "connect", connection("10.1.1.1", trusted=True)) is None


async def test_disconnect_twice_does_not_free_two_slots() -> None:
    script = load("connection_limit.py")
    first, second = connection("203.0.113.9"), connection("203.0.113.9")
    await decide(script, "connect", first)
    await decide(script, "connect", second)
    await decide(script, "disconnect", first)
    await decide(script, "disconnect", first)
    assert await decide(script, "connect", connection("203.0.113.9")) is None
    assert isinstance(await decide(script, "connect", connection("203.0.113.9")), Defer)


async def test_a_reload_starts_with_an_empty_count() -> None:
    old = load("connection_limit.py")
    for _ in range(2):
        await decide(old, "connect", connection("203.0.113.9"))
    assert await decide(load("connection_limit.py"), "connect", connection("203.0.113.9")) is None


# --- header_stamping.py ----------------------------------------------------------------------

RECEIVED_BLOCK = (
    b"Received: from client.example.net ([203.0.113.50])\r\n"
    b"\tby mx.example.com (Mailwarden)\r\n"
    b"\twith ESMTP id 18f2a4c0000001; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    b"DKIM-Signature: v=1; a=rsa-sha256; d=sender.example; s=s1;\r\n"
    b"\th=from:to:subject; bh=abc=; b=def=\r\n"
    b"Return-Path: <forged@elsewhere.example>\r\n"
    b"X-Mailwarden-Server: forged-by-sender\r\n"
    b"x-mailwarden-tls: forged too\r\n"
    b"From: Someone <someone@sender.example>\r\n"
    b"Subject: Quarterly figures\r\n"
)


async def stamp(conn: Connection, block: bytes = RECEIVED_BLOCK) -> Headers:
    msg = message(block)
    action = await decide(load("header_stamping.py"), "data", conn, transaction(), msg)
    assert action is None  # the default: queue
    return msg.headers


async def test_stamps_are_added_at_the_top_and_forged_ones_removed() -> None:
    headers = await stamp(connection())
    stored = headers.to_bytes()
    assert stored.startswith(
        b"X-Mailwarden-Transaction: 18f2a4c0000001\r\n"
        b"X-Mailwarden-TLS: none\r\n"
        b"X-Mailwarden-Client: [203.0.113.50] helo=client.example.net\r\n"
        b"X-Mailwarden-Server: inbound\r\n"
        b"Received: from client.example.net"
    )
    assert b"forged" not in stored
    assert b"Return-Path" not in stored
    assert "X-Mailwarden-Auth" not in headers


async def test_untouched_fields_are_kept_byte_for_byte() -> None:
    stored = (await stamp(connection())).to_bytes()
    assert (
        b"DKIM-Signature: v=1; a=rsa-sha256; d=sender.example; s=s1;\r\n"
        b"\th=from:to:subject; bh=abc=; b=def=\r\n"
        b"From: Someone <someone@sender.example>\r\n"
    ) in stored


async def test_mail_from_outside_gets_an_external_subject() -> None:
    headers = await stamp(connection())
    assert headers.get_all("Subject") == ["[EXTERNAL] Quarterly figures"]
    assert headers.to_bytes().endswith(b"Subject: [EXTERNAL] Quarterly figures\r\n")


async def test_external_tag_is_not_repeated_and_non_ascii_subjects_are_encoded() -> None:
    tagged = RECEIVED_BLOCK.replace(b"Quarterly figures", b"[EXTERNAL] Re: figures")
    assert (await stamp(connection(), tagged)).get("Subject") == "[EXTERNAL] Re: figures"

    encoded = RECEIVED_BLOCK.replace(b"Quarterly figures", b"=?utf-8?q?Gr=C3=BC=C3=9Fe?=")
    headers = await stamp(connection(), encoded)
    assert headers.get("Subject") == "[EXTERNAL] Grüße"
    assert headers.to_bytes().isascii()


async def test_authenticated_tls_client_is_stamped_and_subject_left_alone() -> None:
    conn = connection(
        tls=TlsInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", 256),
        auth=AuthIdentity("alice@example.com", "PLAIN"),
    )
    headers = await stamp(conn)
    stored = headers.to_bytes()
    assert b"X-Mailwarden-TLS: TLSv1.3 TLS_AES_256_GCM_SHA384 (256 bits)\r\n" in stored
    assert b"X-Mailwarden-Auth: alice@example.com (PLAIN)\r\n" in stored
    assert headers.get("Subject") == "Quarterly figures"


async def test_trusted_network_mail_is_not_tagged_external() -> None:
    headers = await stamp(connection("10.0.0.8", trusted=True))
    assert headers.get("Subject") == "Quarterly figures"


# --- routing_metadata.py ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "transport"),
    [
        ("alice@example.com", "lmtp:unix:/run/dovecot/lmtp"),
        ("alice@EXAMPLE.com", "lmtp:unix:/run/dovecot/lmtp"),
        ("dev@lists.example.com", "smtp:[10.0.0.25]:25"),
        ("friend@elsewhere.example", "mx"),
    ],
)
async def test_each_recipient_gets_its_transport(address: str, transport: str) -> None:
    recipient = Recipient(address, {})
    action = await decide(
        load("routing_metadata.py"), "rcpt_to", connection(), transaction(), recipient
    )
    assert isinstance(action, Accept)
    assert action.text is None and action.recipient is None  # 250 2.1.5, address unchanged
    assert dict(action.metadata) == {"transport": transport}


async def test_flagged_message_is_held_for_every_recipient() -> None:
    tx = transaction("someone@sender.example", "a@example.com", "b@example.com")
    msg = message(b"Subject: win\r\nX-Spam-Flag: yes\r\n")
    action = await decide(load("routing_metadata.py"), "data", connection(), tx, msg)
    assert action == Hold("spam flag set by the upstream filter", retention="14d")
    assert isinstance(action, Hold) and action.retention == 14 * 86400.0  # then discarded
    assert action.on_expiry == "discard"


async def test_robot_sender_is_discarded() -> None:
    tx = transaction("Cron@Monitoring.example.net", "ops@example.com")
    msg = message(b"Subject: cron output\r\n")
    action = await decide(load("routing_metadata.py"), "data", connection(), tx, msg)
    assert isinstance(action, Discard)


async def test_quarantined_recipient_is_held_and_the_others_queued() -> None:
    script, conn = load("routing_metadata.py"), connection()
    tx = transaction("someone@sender.example")
    for address in ("legal-hold@example.com", "sales@example.com"):
        recipient = Recipient(address, {})
        accepted = await decide(script, "rcpt_to", conn, tx, recipient)
        recipient.metadata.update(accepted.metadata)  # what the session does with Accept
        tx.recipients.append(recipient)

    action = await decide(script, "data", conn, tx, message(b"Subject: contract\r\n"))

    assert action == Queue(metadata={"received_by": "inbound"})
    held, queued = tx.recipients
    assert (held.state, held.reason) == (RecipientState.HELD, "legal hold: kept for review")
    assert held.retention == float("inf")  # a legal hold is kept until released
    assert queued.state is RecipientState.ACTIVE
    assert held.metadata == {"transport": "lmtp:unix:/run/dovecot/lmtp"}


# --- auth_users.py ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def auth_script() -> PolicyScript:
    script = load("auth_users.py")
    assert script.module is not None
    users = script.module.USERS
    users["alice@example.com"] = script.module.make_password_hash("correct horse battery")
    users["broken@example.com"] = "scrypt$not-a-number$8$1$AAAA$AAAA"
    return script


@pytest.mark.parametrize(
    ("username", "password", "authzid"),
    [
        ("alice@example.com", "correct horse battery", ""),
        ("Alice@Example.com", "correct horse battery", ""),
        ("alice@example.com", "correct horse battery", "alice@example.com"),
    ],
)
async def test_right_password_is_accepted(
    auth_script: PolicyScript, username: str, password: str, authzid: str
) -> None:
    credentials = Credentials("PLAIN", username, password, authzid)
    assert await decide(auth_script, "auth", connection(), credentials) == Accept()


@pytest.mark.parametrize(
    ("username", "password", "authzid"),
    [
        ("alice@example.com", "correct horse batterY", ""),
        ("alice@example.com", "", ""),
        ("bob@example.com", "correct horse battery", ""),
        ("alice@example.com", "correct horse battery", "boss@example.com"),
        ("broken@example.com", "anything", ""),
    ],
)
async def test_anything_else_is_refused(
    auth_script: PolicyScript, username: str, password: str, authzid: str
) -> None:
    credentials = Credentials("LOGIN", username, password, authzid)
    assert await decide(auth_script, "auth", connection(), credentials) is None


def test_password_hashes_are_salted(auth_script: PolicyScript) -> None:
    module = auth_script.module
    assert module is not None
    first, second = (module.make_password_hash("same password") for _ in range(2))
    assert first != second
    assert module.password_matches("same password", first)
    assert module.password_matches("same password", second)
    assert "same password" not in first


# --- count_client_certificates.py ------------------------------------------------------------


@pytest.fixture
def empty_script_counters() -> Iterator[None]:
    saved = dict(stats.script_counters)
    stats.script_counters.clear()
    yield
    stats.script_counters.clear()
    stats.script_counters.update(saved)


@pytest.mark.usefixtures("empty_script_counters")
async def test_each_tls_connection_counts_once_under_yes_or_no() -> None:
    script = load("count_client_certificates.py")
    ehlo = Helo("client.example.net", extended=True)
    plain = connection()
    assert await decide(script, "helo", plain, ehlo) is None  # before STARTTLS: not counted
    without = connection(tls=TlsInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", 256))
    with_cert = connection(
        tls=TlsInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", 256, "commonName=client.example.net")
    )
    for conn in (without, with_cert, without):  # a second EHLO on one connection counts once
        assert await decide(script, "helo", conn, ehlo) is None
    assert snapshot() == {"peer-cert": {"yes": 1, "no": 1}}


def test_a_starttls_client_without_a_certificate_counts_no(tmp_path: Path) -> None:
    # A real node with a trustme certificate; two STARTTLS clients and one plain one.
    ca = trustme.CA()
    cert = ca.issue_cert("mx.test.example", "127.0.0.1")
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    shutil.copy(EXAMPLES / "count_client_certificates.py", tmp_path)
    server = (
        'script = "count_client_certificates.py"\n'
        'tls_certificate = "cert.pem"\ntls_key = "key.pem"\n'
    )
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with running_node(tmp_path, server=server) as node:
        for starttls in (True, True, False):
            with smtplib.SMTP("127.0.0.1", node.port, timeout=10) as client:
                client.ehlo("client.example.net")
                if starttls:
                    assert client.starttls(context=context)[0] == 220
                    client.ehlo("client.example.net")
                    client.ehlo("client.example.net")  # once more: still one count
                client.noop()

        def script_counters() -> dict[str, Any]:
            result = node.mailwarden("stats", "--json")
            assert result.returncode == 0, result.stderr
            return json.loads(result.stdout)["script"]

        expected = {"peer-cert": {"no": 2, "yes": 0}}
        deadline = time.monotonic() + 15  # workers publish every 2 s
        while script_counters() != expected and time.monotonic() < deadline:
            time.sleep(0.1)
        assert script_counters() == expected


# --- disclaimer.py ---------------------------------------------------------------------------


def submission(attachment_name: str) -> bytes:
    sent = EmailMessage()
    sent["From"] = "alice@example.com"
    sent["Subject"] = "the tool"
    sent.set_content("Here it is.\n")
    sent.add_alternative("<html><body><p>Here it is.</p></body></html>\n", subtype="html")
    sent.add_attachment(
        b"MZ\x90\x00program",
        maintype="application",
        subtype="octet-stream",
        filename=attachment_name,
    )
    return sent.as_bytes(policy=policy.SMTP)


async def run_disclaimer(conn: Connection, raw: bytes) -> bytes:
    head, _, body = raw.partition(b"\r\n\r\n")
    msg = Message(Headers.parse(head + b"\r\n"), len(body), memory_body(body))
    assert await decide(load("disclaimer.py"), "data", conn, transaction(), msg) is None
    return await msg.raw()


async def test_disclaimer_strips_programs_and_adds_the_footer_for_submissions() -> None:
    conn = connection(auth=AuthIdentity("alice", "PLAIN"))
    out = await run_disclaimer(conn, submission("tool.EXE"))
    parsed = BytesParser(policy=policy.default).parsebytes(out)
    leaves = [p for p in parsed.walk() if not p.is_multipart()]
    text, html, note = (p.get_content().replace("\r\n", "\n") for p in leaves)
    assert text.startswith("Here it is.\n-- \nThis message is confidential")
    assert "please tell the sender and delete it.</p></body>" in html
    assert note == "The attachment tool.EXE was removed: programs are not sent.\n"
    assert base64.b64encode(b"MZ\x90\x00program") not in out  # the program is gone


async def test_disclaimer_leaves_mail_from_outside_and_harmless_files_alone() -> None:
    raw = submission("tool.pdf")
    assert await run_disclaimer(connection(), raw) == raw  # not authenticated: untouched
    out = await run_disclaimer(connection(auth=AuthIdentity("alice", "PLAIN")), raw)
    assert b"confidential" in out
    assert raw.split(b"Content-Disposition: attachment")[1] in out  # the PDF kept, as sent


# --- sasl_oauthbearer.py: the client message parser (RFC 7628 §3.1) --------------------------

_kv_text = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=20)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_oauthbearer_parser_never_raises(data: bytes) -> None:
    parsed = load("sasl_oauthbearer.py").module.parse_message(data)  # type: ignore[union-attr]
    assert parsed is None or (isinstance(parsed[0], str) and parsed[1])


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["n", "y"]),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=20),
    _kv_text.filter(lambda t: "=" not in t),
    st.lists(st.tuples(_kv_text.filter(lambda k: "=" not in k and k != "auth"), _kv_text)),
)
def test_oauthbearer_parser_reads_what_a_client_writes(
    flag: str, authzid: str, token: str, extra: list[tuple[str, str]]
) -> None:
    escaped = authzid.replace("=", "=3D").replace(",", "=2C")
    pairs = "".join(f"{key}={value}\x01" for key, value in extra)
    header = f"{flag},a={escaped}," if authzid else f"{flag},,"
    message = f"{header}\x01{pairs}auth=Bearer {token}\x01\x01".encode()
    parse = load("sasl_oauthbearer.py").module.parse_message  # type: ignore[union-attr]
    assert parse(message) == (authzid, token)
