"""The listener sees a session only through the narrow ``TrackedSession`` protocol, and the
decisions the session used to make inline are pure functions (trace field, spool record)."""

from __future__ import annotations

import ast
import io
from pathlib import Path

from mailwarden.policy.actions import Hold
from mailwarden.policy.context import (
    AuthIdentity,
    Connection,
    Recipient,
    Sender,
    TlsInfo,
    Transaction,
    server_update,
)
from mailwarden.policy.headers import Headers
from mailwarden.policy.outcome import apply_end_of_data
from mailwarden.smtp import server, session
from mailwarden.smtp.record import spool_record
from mailwarden.smtp.server import TrackedSession
from mailwarden.smtp.session import SmtpSession
from mailwarden.smtp.trace import received_header
from mailwarden.spool.writer import MessageWriter

PROTOCOL_MEMBERS = {"remote_ip", "wake", "sweep", "expire"}


def test_tracked_session_is_exactly_what_the_server_uses() -> None:
    members = {
        name
        for name in vars(TrackedSession)
        if not name.startswith("_") and name not in {"register"}
    } | set(TrackedSession.__annotations__)
    assert members == PROTOCOL_MEMBERS
    # Every attribute the server reads on a session is a member of the protocol: no private
    # field, no reach into the session's core or connection.
    used = {
        node.attr
        for node in ast.walk(ast.parse(Path(server.__file__).read_text()))
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "session"
    }
    assert used <= PROTOCOL_MEMBERS, used - PROTOCOL_MEMBERS


def test_smtp_session_satisfies_the_protocol() -> None:
    assert isinstance(SmtpSession(None), TrackedSession)  # type: ignore[arg-type]
    assert not hasattr(SmtpSession(None), "busy")  # type: ignore[arg-type]
    assert "_remote_ip" not in Path(session.__file__).read_text()


def _conn() -> Connection:
    conn = Connection("c1", "inbound", "2001:db8::1", 40000, "::1", 25)
    server_update(
        conn,
        helo_name="client.example",
        esmtp=True,
        tls=TlsInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", 256),
        auth=AuthIdentity("alice", "PLAIN"),
    )
    return conn


def test_received_header_names_protocol_tls_and_the_only_recipient() -> None:
    date = "Wed, 02 Dec 2026 06:00:00 +0000"
    header = received_header(_conn(), "m1", "a@example.com", "mx.example", False, date)
    assert header == (
        b"Received: from client.example ([IPv6:2001:db8::1])\r\n"
        b"\tby mx.example (Mailwarden)\r\n"
        b"\t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256 bits))\r\n"
        b"\twith ESMTPSA id m1\r\n"
        b"\tfor <a@example.com>; Wed, 02 Dec 2026 06:00:00 +0000\r\n"
    )
    plain = Connection("c2", "inbound", "192.0.2.1", 40000, "192.0.2.2", 25)
    several = received_header(plain, "m2", None, "mx.example", False, date)
    assert several.endswith(b"\twith SMTP id m2; Wed, 02 Dec 2026 06:00:00 +0000\r\n")
    assert b"from unknown ([192.0.2.1])" in several and b"for <" not in several


def test_spool_record_carries_the_envelope_and_the_kept_recipients(tmp_path: Path) -> None:
    writer = MessageWriter("m1", lambda message_id: tmp_path / message_id, 1 << 20)
    writer.write(b"Subject: hi\r\n\r\nbody\r\n")
    tx = Transaction("m1", Sender("s@example.org", {"SIZE": "10"}), metadata={"t": 1})
    kept = Recipient("a@example.com", {}, {"transport": "lmtp"})
    tx.recipients = [kept]
    headers = Headers.parse(writer.header_block())
    record = spool_record(_conn(), tx, writer, headers, [kept], 1234.5)
    assert (record.id, record.server_id, record.sender, record.received_at) == (
        "m1",
        "inbound",
        "s@example.org",
        1234.5,
    )
    assert record.tls == {"protocol": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384", "bits": 256}
    assert record.auth == {"username": "alice", "mechanism": "PLAIN"}
    assert record.headers == b"Subject: hi\r\n\r\n"
    assert record.body is not None and io.BytesIO(record.body).read() == b"body\r\n"
    assert record.size == len(b"Subject: hi\r\n\r\nbody\r\n")
    assert [(r.address, r.metadata, r.state) for r in record.recipients] == [
        ("a@example.com", {"transport": "lmtp"}, "active")
    ]
    writer.discard()


def test_a_held_recipient_is_spooled_with_the_end_of_its_retention(tmp_path: Path) -> None:
    writer = MessageWriter("m2", lambda message_id: tmp_path / message_id, 1 << 20)
    writer.write(b"Subject: spam\r\n\r\nbody\r\n")
    tx = Transaction("m2", Sender("s@example.org", {}))
    tx.recipients = [Recipient(f"{name}@example.com", {}) for name in ("a", "b", "c", "d")]
    # As a data hook does: some recipients one by one, then an action for the rest.
    tx.recipients[0].hold("legal hold", retention="forever")
    tx.recipients[1].hold("own terms")  # no retention of its own: the configured one
    tx.recipients[3].discard()
    spam = Hold("spam", retention="2h", on_expiry="bounce")
    kept = apply_end_of_data(spam, tx.recipients).kept
    assert kept == tx.recipients[:3]
    headers = Headers.parse(writer.header_block())
    record = spool_record(_conn(), tx, writer, headers, kept, 1000.0, hold_retention=600.0)
    assert [(r.state, r.reason, r.next_attempt, r.on_expiry) for r in record.recipients] == [
        ("held", "legal hold", float("inf"), "discard"),
        ("held", "own terms", 1600.0, "discard"),
        ("held", "spam", 1000.0 + 7200, "bounce"),
    ]
    writer.discard()
