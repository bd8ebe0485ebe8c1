"""Message editing end to end: a real node whose data hook appends a footer, strips a listed
attachment (found with ``dlp``) and then DKIM-signs. What the spool keeps, and what reaches a
real peer (Postfix's smtp-sink) after delivery, is the edited message; the signature, checked
by dkimpy's own verifier, covers it. An untouched large message keeps its received spool file.
"""

from __future__ import annotations

import base64
import smtplib
import textwrap
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

import dkim as dkimpy
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from tests.queue.delivery_support import FAST_RETRIES, node_config, route_to, wait_until
from tests.support.node import free_port, node_process, running_node
from tests.support.sink import smtp_sink

from mailwarden.policy.headers import Headers
from mailwarden.spool.reader import iter_messages, read_message_bytes

POLICY = """
from mailwarden.lib import dkim, dlp


async def data(conn, tx, message):
    if message.headers.get("Subject") == "untouched":
        return None
    await message.append_text("-- \\nScanned by Mailwarden ✓", html="<hr><p>Scanned ✓</p>")
    for part in await dlp.scan(message):
        if part.extension == "exe":
            await message.replace_part(
                part, f"The attachment {{part.filename}} was removed by policy.\\n"
            )
    message.headers.add("X-Edited-Size", str(message.size))
    await dkim.sign(message, domain="example.org", selector="edit", key={key!r})
"""

PAYLOAD = b"MZ\x90\x00" + bytes(range(256)) * 64  # a 16 KiB "program"
BIG_TEXT = "a line of the report, long enough to make the body spill to a file\n" * 200


def build(subject: str, attachment: bytes | None = PAYLOAD) -> bytes:
    message = EmailMessage()
    message["From"] = "alice@example.org"
    message["To"] = "bob@example.org"
    message["Subject"] = subject
    message.set_content("Hello Bob,\n" + BIG_TEXT)
    message.add_alternative("<html><body><p>Hello Bob</p></body></html>\n", subtype="html")
    if attachment is not None:
        message.add_attachment(
            attachment, maintype="application", subtype="octet-stream", filename="setup.exe"
        )
    return message.as_bytes(policy=policy.SMTP)


def send(port: int, raw: bytes, recipient: str = "bob@example.org") -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail("alice@example.org", [recipient], raw)


def keys(tmp_path: Path) -> tuple[Path, bytes]:
    """An Ed25519 signing key on disk and its DNS key record (RFC 8463)."""
    private = ed25519.Ed25519PrivateKey.generate()
    key_file = tmp_path / "edit.pem"
    key_file.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return key_file, b"v=DKIM1; k=ed25519; p=" + base64.b64encode(public)


def check_edited(raw: bytes, record: bytes) -> None:
    parsed = BytesParser(policy=policy.default).parsebytes(raw)
    assert all(not part.defects for part in parsed.walk())
    leaves = [p for p in parsed.walk() if not p.is_multipart()]
    assert [p.get_content_type() for p in leaves] == ["text/plain", "text/html", "text/plain"]
    text, html, note = (p.get_content().replace("\r\n", "\n") for p in leaves)
    assert text == "Hello Bob,\n" + BIG_TEXT + "-- \nScanned by Mailwarden ✓\n"
    assert html.endswith("<hr><p>Scanned ✓</p></body></html>\n")
    assert note == "The attachment setup.exe was removed by policy.\n"
    assert base64.b64encode(PAYLOAD)[:60] not in raw  # the program's octets are gone
    # dkimpy's own verifier, given the published key: the signature covers the edited body.
    assert dkimpy.verify(raw, dnsfunc=lambda _name, timeout=5: record)


def test_footer_and_stripped_attachment_are_what_the_spool_keeps(tmp_path: Path) -> None:
    key_file, record = keys(tmp_path)
    (tmp_path / "policy.py").write_text(textwrap.dedent(POLICY.format(key=str(key_file))))
    untouched = build("untouched", attachment=None)
    with running_node(
        tmp_path, server='script = "policy.py"\n', body="[spool]\nmemory_threshold = 4096\n"
    ) as node:
        send(node.port, build("edited"))
        send(node.port, untouched)
        stored = {m.id: read_message_bytes(node.spool, m.id) for m in iter_messages(node.spool)}
        records = list(iter_messages(node.spool))
    assert len(stored) == 2
    edited_record = next(r for r in records if b"Subject: edited" in (stored[r.id] or b""))
    plain_record = next(r for r in records if r is not edited_record)
    edited = stored[edited_record.id] or b""
    check_edited(edited, record)
    assert edited_record.size == len(edited)
    # message.size told the script the edited size: the stored message less the two fields
    # added after it was read.
    head, _, body = edited.partition(b"\r\n\r\n")
    fields = Headers.parse(head + b"\r\n")
    said = int(fields.get("X-Edited-Size") or 0)
    fields.delete("X-Edited-Size")
    fields.delete("DKIM-Signature")
    assert said == len(fields.to_bytes()) + 2 + len(body)
    # The untouched message is stored as received (after the trace field), in its own
    # spill file: nothing was rebuilt or copied for it.
    kept = stored[plain_record.id] or b""
    assert kept.endswith(untouched)
    assert plain_record.body_file is not None and not plain_record.body_file.name.endswith(
        "-edited"
    )
    assert edited_record.body_file is not None and edited_record.body_file.name.endswith("-edited")
    # The received body's file went once the edited one was written.
    spill_files = sorted(p.name for p in (node.spool / "data").iterdir())
    assert spill_files == sorted([plain_record.body_file.name, edited_record.body_file.name])


def test_the_delivered_message_is_the_edited_one(tmp_path: Path) -> None:
    key_file, record = keys(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "policy.py").write_text(textwrap.dedent(POLICY.format(key=str(key_file))))
    port = free_port()
    with smtp_sink(tmp_path) as sink:
        config = out / "mailwarden.toml"
        config.write_text(
            node_config(
                port,
                server='script = "policy.py"\n',
                body=route_to(sink.port) + FAST_RETRIES + "\n[spool]\nmemory_threshold = 4096\n",
            )
        )
        with node_process(out, config, port):
            send(port, build("edited"), recipient="carol@example.net")
            (dump,) = wait_until(sink.messages, what="the message at smtp-sink")
    # smtp-sink dumps its X-* envelope lines, then the message (signed last, so its first
    # field is the signature), with LF line ends.
    raw = dump[dump.index(b"DKIM-Signature:") :].replace(b"\n", b"\r\n")
    check_edited(raw, record)
