"""Body edits of the data hook's message: footers and disclaimers, parts replaced and removed.

Each test builds the message as a client would send it (CRLF, as the session stores it), edits
it through ``Message`` and reads the result back with the stdlib parser, as a mail client would.
"""

from __future__ import annotations

import base64
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

import pytest

from mailwarden.lib import dlp
from mailwarden.policy.context import Message, memory_body
from mailwarden.policy.headers import Headers
from mailwarden.spool.writer import MessageWriter

FOOTER = "-- \nSent through Mailwarden ✓"


def split(raw: bytes) -> tuple[bytes, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return head + b"\r\n", body


def message_of(raw: bytes) -> Message:
    head, body = split(raw)
    return Message(Headers.parse(head), len(body), memory_body(body))


def wire(message: EmailMessage) -> bytes:
    return message.as_bytes(policy=policy.SMTP)


def parse(raw: bytes) -> EmailMessage:
    parsed = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(parsed, EmailMessage)
    for part in parsed.walk():
        assert not part.defects, (part.get_content_type(), part.defects)
    return parsed


def plain(text: str, *, cte: str | None = None, charset: str = "utf-8") -> bytes:
    message = EmailMessage()
    message["From"] = "alice@example.org"
    message["To"] = "bob@example.net"
    message["Subject"] = "plain"
    message.set_content(text, charset=charset, cte=cte)
    return wire(message)


def rich(attachment: bytes = b"%PDF-1.4\n%%EOF\n") -> bytes:
    message = EmailMessage()
    message["From"] = "alice@example.org"
    message["To"] = "bob@example.net"
    message["Subject"] = "rich"
    message.set_content("Hello Bob,\nthe figures.\n")
    message.add_alternative(
        "<html><body class='x'><p>Hello Bob</p></body></html>\n", subtype="html"
    )
    message.add_attachment(attachment, maintype="application", subtype="pdf", filename="q3.pdf")
    return wire(message)


async def test_footer_on_a_single_part_utf8_body() -> None:
    message = message_of(plain("Hello Bob\n", cte="8bit"))
    assert await message.append_text(FOOTER) == ["1"]
    out = await message.raw()
    assert parse(out).get_content().replace("\r\n", "\n") == "Hello Bob\n" + FOOTER + "\n"
    assert message.size == len(out)
    assert message.body_size == len(split(out)[1])


@pytest.mark.parametrize("cte", ["quoted-printable", "base64"])
async def test_footer_keeps_the_parts_transfer_encoding(cte: str) -> None:
    message = message_of(plain("Grüße\n" + "long line " * 30 + "\n", cte=cte))
    await message.prepend_text("DISCLAIMER")
    out = await message.raw()
    parsed = parse(out)
    assert parsed["Content-Transfer-Encoding"] == cte
    assert parsed.get_content().replace("\r\n", "\n").startswith("DISCLAIMER\nGrüße\n")
    assert all(len(line) <= 78 for line in split(out)[1].split(b"\r\n"))


async def test_non_ascii_footer_on_a_7bit_body_stays_7bit() -> None:
    message = message_of(plain("plain ascii\n", charset="us-ascii"))
    await message.append_text(FOOTER)
    out = await message.raw()
    assert out.isascii()  # 7-bit in, 7-bit out: quoted-printable and charset UTF-8
    parsed = parse(out)
    assert parsed["Content-Transfer-Encoding"] == "quoted-printable"
    assert parsed.get_content_charset() == "utf-8"
    assert parsed.get_content().replace("\r\n", "\n").endswith("Sent through Mailwarden ✓\n")


async def test_latin1_body_keeps_its_bytes_and_becomes_utf8_when_it_must() -> None:
    message = message_of(plain("Caf\xe9\n", charset="iso-8859-1", cte="8bit"))
    await message.append_text("ok")  # fits Latin-1: the charset stays
    parsed = parse(await message.raw())
    assert parsed.get_content_charset() == "iso-8859-1"
    await message.append_text("✓")  # does not: the part becomes UTF-8, its text intact
    parsed = parse(await message.raw())
    assert parsed.get_content_charset() == "utf-8"
    assert parsed.get_content().replace("\r\n", "\n") == "Café\nok\n✓\n"


async def test_html_footer_goes_inside_body_and_is_escaped() -> None:
    message = message_of(rich())
    changed = await message.append_text("Tom & Jerry <3")
    assert changed == ["1.1", "1.2"]
    parsed = parse(await message.raw())
    text, html = (p.get_content() for p in parsed.walk() if p.get_content_maintype() == "text")
    assert text.replace("\r\n", "\n").endswith("the figures.\nTom & Jerry <3\n")
    assert "<p>Tom &amp; Jerry &lt;3</p></body>" in html
    await message.prepend_text("top", html="<b>TOP</b>")
    html = next(p for p in parse(await message.raw()).walk() if p.get_content_subtype() == "html")
    assert "<body class='x'><b>TOP</b><p>Hello Bob" in html.get_content()


def forwarding() -> tuple[EmailMessage, EmailMessage]:
    """A cover note (``outer``) and the message it forwards (``inner``), not yet attached."""
    outer = EmailMessage()
    outer["From"] = "a@example.org"
    outer.set_content("cover note\n")
    inner = EmailMessage()
    inner["Subject"] = "forwarded"
    inner.set_content("inner text\n")
    return outer, inner


async def test_attachment_and_enclosed_message_get_no_footer() -> None:
    outer, inner = forwarding()
    outer.add_attachment(inner)
    outer.add_attachment("notes\n", filename="notes.txt")
    raw = wire(outer)
    message = message_of(raw)
    assert await message.append_text("FOOTER") == ["1"]
    out = await message.raw()
    assert out.count(b"FOOTER") == 1
    assert b"inner text\r\n" in out and b"notes\r\n" in out


async def test_strip_an_attachment_found_by_dlp() -> None:
    raw = rich(b"%PDF-1.4\nsecret\n%%EOF\n")
    message = message_of(raw)
    (pdf,) = [p for p in await dlp.scan(message) if p.extension == "pdf"]
    await message.replace_part(pdf, "The attachment q3.pdf was removed by policy.\n")
    out = await message.raw()
    parsed = parse(out)
    assert b"secret" not in out and base64.b64encode(b"%PDF-1.4\nsecret") not in out
    leaves = [p for p in parsed.walk() if not p.is_multipart()]
    assert [p.get_content_type() for p in leaves] == ["text/plain", "text/html", "text/plain"]
    assert leaves[2].get_content() == "The attachment q3.pdf was removed by policy.\r\n"
    assert leaves[2].get_content_disposition() is None
    # The alternative part, untouched, is the very octets that came in.
    original = parse(raw).get_payload()[0].as_bytes(policy=policy.SMTP)
    assert original.split(b"\r\n\r\n", 1)[1] in out


async def test_remove_part_and_replace_with_a_named_attachment() -> None:
    message = message_of(rich())
    await message.remove_part("2")
    parsed = parse(await message.raw())
    assert [p.get_content_type() for p in parsed.walk()] == [
        "multipart/mixed",
        "multipart/alternative",
        "text/plain",
        "text/html",
    ]
    await message.replace_part("1.2", b"\x00\xffbinary", filename="r\xe9sum\xe9 " + "x" * 80)
    parsed = parse(await message.raw())
    attached = [p for p in parsed.walk() if p.get_content_disposition() == "attachment"]
    assert attached[0].get_filename() == "r\xe9sum\xe9 " + "x" * 80
    assert attached[0].get_content() == b"\x00\xffbinary"
    assert all(len(line) <= 78 for line in (await message.raw()).split(b"\r\n"))


async def test_replacing_a_single_part_body_rewrites_the_message_content_fields() -> None:
    head = b"From: a@example.org\r\nSubject: s\r\nContent-Type: text/plain\r\n"
    message = Message(Headers.parse(head), 6, memory_body(b"hello\r\n"))
    await message.replace_part("1", b"\x89PNG....", content_type="image/png", filename="p.png")
    out = await message.raw()
    parsed = parse(out)
    assert parsed["MIME-Version"] == "1.0"  # none before: MIME content needs it (RFC 2045 §4)
    assert parsed.get_content_type() == "image/png"
    assert parsed.get_content() == b"\x89PNG...."
    assert out.startswith(b"From: a@example.org\r\nSubject: s\r\n")


async def test_bad_edits_raise_clear_errors() -> None:
    message = message_of(rich())
    with pytest.raises(ValueError, match="no part '9'"):
        await message.remove_part("9")
    with pytest.raises(ValueError, match="type/subtype"):
        await message.replace_part("2", "x", content_type="not a type")
    single = message_of(plain("hi\n"))
    with pytest.raises(ValueError, match="replace it"):
        await single.remove_part("1")
    only = EmailMessage()
    only.make_mixed()
    only.attach(EmailMessage())
    only.get_payload()[0].set_content("one\n")
    with pytest.raises(ValueError, match="only part"):
        await message_of(wire(only)).remove_part("1")


async def test_an_untouched_message_is_not_copied(tmp_path: Path) -> None:
    """No edit: the spool keeps the received file; open_body is the writer's own."""
    writer = MessageWriter("m1", lambda i: tmp_path / i, memory_threshold=64)
    writer.write(rich(b"A" * 4000))
    message = Message(Headers.parse(writer.header_block()), writer.body_size, writer.open_body)
    message.headers.add("X-Seen", "yes")
    assert not message.body_edited
    assert (await message.parts())[0].path == "1"  # looking is not editing
    assert not message.body_edited
    with message.open_body() as handle:
        assert handle.name == str(tmp_path / "m1")  # the spill file itself


async def test_an_edited_large_body_is_respooled_from_the_mapped_file(tmp_path: Path) -> None:
    writer = MessageWriter("m1", lambda i: tmp_path / i, memory_threshold=64)
    attachment = bytes(range(256)) * 40
    writer.write(rich(attachment))
    message = Message(Headers.parse(writer.header_block()), writer.body_size, writer.open_body)
    await message.append_text("footer")
    expected = await message.body()
    writer.replace_body(message.body_chunks())
    message.close()
    assert writer.spilled and writer.body_size == len(expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m1-edited"]  # the old file is gone
    assert (tmp_path / "m1-edited").read_bytes() == expected
    assert base64.b64encode(attachment)[:76] in expected


async def test_text_that_looks_like_a_boundary_cannot_split_the_message() -> None:
    raw = rich()
    outer = parse(raw).get_boundary()
    message = message_of(raw)
    await message.append_text(f"quoted from elsewhere:\n--{outer}\nnot a part")
    parsed = parse(await message.raw())
    assert len(parsed.get_payload()) == 2  # still the alternative and the attachment
    text = next(p for p in parsed.walk() if p.get_content_type() == "text/plain")
    assert text.get_content().replace("\r\n", "\n").endswith(f"--{outer}\nnot a part\n")


async def test_a_signed_body_refuses_edits(tmp_path: Path) -> None:
    """DKIM signs the message as edited; a body edit after signing would break the
    signature, so it is refused with a clear error instead."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from mailwarden.lib import dkim

    key = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    message = message_of(rich())
    await message.append_text("footer")
    await dkim.sign(message, domain="example.org", selector="s", key=key)
    assert len(await message.parts()) == 4  # reading is still fine
    with pytest.raises(ValueError, match="DKIM-Signature already; edit it before signing"):
        await message.append_text("too late")
    with pytest.raises(ValueError, match="before signing"):
        await message.remove_part("2")


async def test_a_part_inside_an_enclosed_message_can_be_removed() -> None:
    outer, inner = forwarding()
    inner.add_attachment(b"PK\x03\x04zip", maintype="application", subtype="zip", filename="a.zip")
    outer.add_attachment(inner)
    message = message_of(wire(outer))
    paths = [(p.path, p.content_type) for p in await message.parts()]
    assert paths == [
        ("1", "text/plain"),
        ("2", "message/rfc822"),
        ("2.1", "text/plain"),
        ("2.2", "application/zip"),
    ]
    await message.remove_part("2.2")
    parsed = parse(await message.raw())
    enclosed = next(p for p in parsed.walk() if p.get_content_type() == "message/rfc822")
    inner_parsed = enclosed.get_payload()[0]
    assert inner_parsed["Subject"] == "forwarded"
    assert [p.get_content_type() for p in inner_parsed.walk()] == ["multipart/mixed", "text/plain"]


async def test_a_message_without_a_body_gets_one() -> None:
    message = Message(
        Headers.parse(b"From: a@example.org\r\nSubject: s\r\n"), 0, memory_body(b""), has_body=False
    )
    assert await message.append_text("footer") == ["1"]
    assert await message.raw() == (
        b"From: a@example.org\r\nSubject: s\r\nMIME-Version: 1.0\r\n\r\nfooter\r\n"
    )
