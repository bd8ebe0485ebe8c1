"""8-bit MIME converted for servers without 8BITMIME (RFC 6152 §3): the parser-level
properties with hypothesis, and the conversion on the wire against Postfix's smtp-sink."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from tests.support.sink import smtp_sink

from mailwarden.delivery.connection import ConnectOptions, OutboundConnection
from mailwarden.delivery.mx import Target
from mailwarden.smtp.client import Envelope
from mailwarden.smtp.seven_bit import to_seven_bit

TEXT = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\r\n"), max_size=120
)
LINES = st.lists(TEXT, min_size=1, max_size=8)
BLOBS = st.binary(min_size=1, max_size=600).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


def build(texts: list[list[str]], blobs: list[bytes]) -> bytes:
    """A multipart/mixed message as an 8BITMIME client sends it (CRLF line ends): an ASCII
    part, 8-bit text parts, 8-bit application parts (no CR or LF in them: SMTP without
    BINARYMIME cannot carry those)."""
    parts = [b"Content-Type: text/plain; charset=us-ascii\r\n\r\nfirst part, plain ASCII\r\n"]
    for lines in texts:
        body = "\r\n".join(lines).encode() + b"\r\n"
        parts.append(
            b"Content-Type: text/plain; charset=utf-8\r\n"
            b"Content-Transfer-Encoding: 8bit\r\n\r\n" + body
        )
    for blob in blobs:
        parts.append(
            b"Content-Type: application/octet-stream\r\n"
            b"Content-Transfer-Encoding: 8bit\r\n\r\n" + blob + b"\r\n"
        )
    head = (
        b"From: a@example.org\r\nSubject: parts\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="=-b-="\r\n\r\npreamble\r\n'
    )
    return head + b"".join(b"--=-b-=\r\n" + part for part in parts) + b"--=-b-=--\r\n"


def decoded_parts(data: bytes) -> list[object]:
    message = email.message_from_bytes(data, policy=email.policy.default)
    return [part.get_content() for part in message.walk() if not part.is_multipart()]


@given(st.lists(LINES, max_size=3), st.lists(BLOBS, max_size=2))
@settings(max_examples=150, deadline=None)
def test_the_converted_message_is_7_bit_and_every_part_reads_the_same(texts, blobs) -> None:
    original = build(texts, blobs)
    converted = to_seven_bit(original)
    assert converted is not None and converted.isascii()
    assert max(map(len, converted.split(b"\r\n"))) <= 998
    assert decoded_parts(converted) == decoded_parts(original)


@given(st.binary(max_size=400).filter(lambda b: b.isascii()))
def test_a_7_bit_message_is_left_alone(body: bytes) -> None:
    message = b"Subject: x\r\n\r\n" + body
    assert to_seven_bit(message) is message


def test_a_single_part_8_bit_body_becomes_quoted_printable_keeping_the_headers() -> None:
    message = (
        "Subject: caf\N{LATIN SMALL LETTER E WITH ACUTE}?\r\n".encode("ascii", "replace")
        + b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
        + b"X-Keep: me\r\n\r\n"
        + "d\u00e9j\u00e0 vu \r\n".encode()
    )
    converted = to_seven_bit(message)
    assert converted is not None
    headers, _, body = converted.partition(b"\r\n\r\n")
    assert headers.split(b"\r\n") == [
        b"Subject: caf??",
        b"Content-Type: text/plain; charset=utf-8",
        b"Content-Transfer-Encoding: quoted-printable",
        b"X-Keep: me",
    ]
    assert body == b"d=C3=A9j=C3=A0 vu=20\r\n"


def test_8_bit_header_fields_cannot_be_converted() -> None:
    message = "Subject: caf\N{LATIN SMALL LETTER E WITH ACUTE}\r\n\r\nbody\r\n".encode()
    assert to_seven_bit(message) is None


MESSAGE = (
    b"From: a@example.org\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n\r\n" + "gr\u00fc\u00dfe\r\n".encode()
)


async def test_a_server_without_8bitmime_gets_the_message_converted(tmp_path: Path) -> None:
    envelope = Envelope("s@x.example", ["a@example.org"], body="8BITMIME")
    with (
        smtp_sink(tmp_path, "-8", name="plain") as plain,
        smtp_sink(tmp_path, name="eightbit") as eightbit,
    ):
        for sink in (plain, eightbit):
            conn = await OutboundConnection.open(
                Target(10, "sink.test.example", "127.0.0.1", sink.port),
                ConnectOptions("out1.test.example"),
            )
            await conn.send(envelope, MESSAGE)
            await conn.close()
        (converted,) = plain.messages()
        (kept,) = eightbit.messages()
    assert b"gr=C3=BC=C3=9Fe" in converted and converted.isascii()
    assert "gr\u00fc\u00dfe\n".encode() in kept  # 8BITMIME offered: sent as it is
