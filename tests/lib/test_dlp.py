"""mailwarden.lib.dlp: the MIME walker, hash lists, type rules, patterns and card numbers."""

from __future__ import annotations

import base64
import hashlib
import quopri
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailwarden.lib import dlp
from mailwarden.policy.actions import Reject
from mailwarden.policy.context import Message, memory_body
from mailwarden.policy.headers import Headers

# The first octets of a Windows PE executable (what puremagic recognises as .exe).
EXE = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00" + bytes(200)
PNG = b"\x89PNG\r\n\x1a\n" + bytes(64)
CARD = "4111 1111 1111 1111"  # the well-known Visa test number, Luhn-valid


def b64(data: bytes) -> bytes:
    return base64.encodebytes(data).replace(b"\n", b"\r\n")


def mime(*parts: bytes, boundary: bytes = b"b1", head: bytes = b"Subject: test\r\n") -> bytes:
    body = b"".join(b"--" + boundary + b"\r\n" + part + b"\r\n" for part in parts)
    return (
        head
        + b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="
        + boundary
        + b"\r\n\r\n"
        + body
        + b"--"
        + boundary
        + b"--\r\n"
    )


def attachment(data: bytes, header: bytes) -> bytes:
    return header + b"\r\nContent-Transfer-Encoding: base64\r\n\r\n" + b64(data)


def text_part(text: str, charset: str = "utf-8") -> bytes:
    return (
        f"Content-Type: text/plain; charset={charset}\r\n"
        "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
    ).encode() + _qp(text.encode(charset))


def as_message(raw: bytes) -> Message:
    """The object a data hook gets, for a message given as bytes."""
    head, _, body = raw.partition(b"\r\n\r\n")
    return Message(Headers.parse(head + b"\r\n"), len(body), memory_body(body))


def _qp(data: bytes) -> bytes:
    return quopri.encodestring(data).replace(b"\n", b"\r\n")


NESTED = mime(
    text_part("Bonjour, ci-joint la facture. Café compris."),
    attachment(
        EXE,
        b"Content-Type: application/pdf\r\n"
        b"Content-Disposition: attachment; filename*=utf-8''facture%20%C3%A9t%C3%A9.pdf",
    ),
    b"Content-Type: message/rfc822\r\n\r\n"
    + mime(
        text_part("inner text"),
        attachment(PNG, b'Content-Type: image/png; name="logo.png"'),
        boundary=b"inner",
        head=b"Subject: forwarded\r\n",
    ),
)


def test_walk_describes_every_leaf_with_imap_style_paths() -> None:
    parts = dlp.walk(NESTED).parts
    assert [p.path for p in parts] == ["1", "2", "3.1", "3.2"]
    text, exe, inner_text, logo = parts
    assert text.declared_type == "text/plain"
    assert text.text() == "Bonjour, ci-joint la facture. Café compris."
    # RFC 2231 §4: charset and percent-encoding of the file name are undone.
    assert exe.filename == "facture été.pdf"
    assert exe.declared_type == "application/pdf"
    assert exe.sniffed_type == "application/vnd.microsoft.portable-executable"
    assert exe.size == len(EXE)
    assert exe.sha256 == hashlib.sha256(EXE).hexdigest()
    assert exe.sha512 == hashlib.sha512(EXE).hexdigest()
    assert inner_text.text() == "inner text"
    assert logo.filename == "logo.png"
    assert logo.sniffed_type == "image/png"
    assert not any(p.malformed for p in parts)


def test_single_part_message_is_part_1() -> None:
    parts = dlp.walk(b"Subject: x\r\n\r\nplain body\r\n").parts
    assert [(p.path, p.declared_type, p.size) for p in parts] == [("1", "text/plain", 12)]


def test_nested_messages_beyond_max_depth_are_one_reported_part() -> None:
    parts = dlp.walk(NESTED, max_depth=0).parts
    assert [p.path for p in parts] == ["1", "2", "3"]
    assert parts[2].declared_type == "message/rfc822"
    assert parts[2].problems == ("nested message deeper than max_depth=0",)
    deep = NESTED
    for level in range(6):
        wrapped = b"Content-Type: message/rfc822\r\n\r\n" + deep
        deep = mime(wrapped, boundary=b"level%d" % level)
    paths = [p.path for p in dlp.walk(deep).parts]
    assert paths == ["1.1.1.1.1"]  # four levels walked, the fifth reported whole


def test_bad_base64_is_reported_and_still_hashed() -> None:
    broken = b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    parts = dlp.walk(mime(broken + b"QUJD!!RE\r\n")).parts
    assert parts[0].problems == ("bad base64",)
    assert parts[0].malformed
    assert parts[0].sha256 == hashlib.sha256(b"ABCD").hexdigest()


def test_missing_boundary_is_reported_not_raised() -> None:
    no_param = b"Subject: x\r\nContent-Type: multipart/mixed\r\n\r\n--x\r\n\r\nbody\r\n--x--\r\n"
    (part,) = dlp.walk(no_param).parts
    assert "no boundary in multipart" in part.problems
    assert part.size == len(b"--x\r\n\r\nbody\r\n--x--\r\n")
    never_seen = b"Content-Type: multipart/mixed; boundary=zz\r\n\r\nno delimiter here\r\n"
    (part,) = dlp.walk(never_seen).parts
    assert "start boundary not found" in part.problems
    assert dlp.walk(never_seen).malformed


async def test_scan_reads_at_most_max_bytes_of_a_message() -> None:
    message = as_message(
        mime(attachment(EXE, b'Content-Type: application/octet-stream; name="a.exe"'))
    )
    head = message.headers.to_bytes()
    whole = await dlp.scan(message)
    assert not whole.truncated
    assert whole.parts[0].sha256 == hashlib.sha256(EXE).hexdigest()
    cut = await dlp.scan(message, max_bytes=len(head) + 120)
    assert cut.truncated
    assert cut.size == len(head) + 120
    assert cut.parts[0].size < len(EXE)
    findings = dlp.check(cut, dlp.Rules(malformed=True))
    assert findings[0] == dlp.Finding("malformed", "malformed", "", "message larger than max_bytes")


def test_hash_list_from_file_matches_sha256_and_sha512(tmp_path: Path) -> None:
    listed = tmp_path / "bad.sha"
    listed.write_text(
        f"# known bad attachments\n\n{hashlib.sha256(EXE).hexdigest()}  evil.exe\n"
        f"{hashlib.sha512(PNG).hexdigest().upper()}\n"
    )
    hashes = dlp.HashList.from_file(listed)
    assert len(hashes) == 2
    assert hashlib.sha256(EXE).hexdigest() in hashes
    findings = dlp.check(dlp.walk(NESTED), dlp.Rules(hashes=hashes))
    assert [(f.kind, f.part) for f in findings] == [("hash", "2"), ("hash", "3.2")]


def test_hash_list_names_file_and_line_of_a_bad_digest(tmp_path: Path) -> None:
    listed = tmp_path / "bad.sha"
    listed.write_text(f"{hashlib.sha256(b'').hexdigest()}\nnot-a-digest\n")
    with pytest.raises(ValueError, match=rf"{listed}, line 2: 'not-a-digest'"):
        dlp.HashList.from_file(listed)


def test_type_rules_mismatch_and_block_lists() -> None:
    rules = dlp.Rules(
        type_mismatch=True, block_extensions={".PNG"}, block_types={"application/pdf"}
    )
    findings = dlp.check(dlp.walk(NESTED), rules)
    assert [(f.kind, f.part) for f in findings] == [
        ("type", "2"),  # declared application/pdf
        ("mismatch", "2"),  # named .pdf, content is an executable
        ("extension", "3.2"),
    ]
    assert "application/vnd.microsoft.portable-executable" in findings[1].detail
    # Sniffed types are blocked too, whatever the part declares.
    sniffed = dlp.Rules(block_types={"application/vnd.microsoft.portable-executable"})
    assert [f.part for f in dlp.check(dlp.walk(NESTED), sniffed)] == ["2"]


def test_declared_type_mismatch_without_file_name() -> None:
    message = mime(attachment(EXE, b"Content-Type: image/jpeg"))
    (finding,) = dlp.check(dlp.walk(message), dlp.Rules(type_mismatch=True))
    assert finding.detail.startswith("declared image/jpeg but the content is")


def test_patterns_search_text_decoded_with_its_charset() -> None:
    message = mime(text_part("Projet Bérénice confidentiel", charset="iso-8859-1"))
    rules = dlp.Rules(patterns={"codename": r"B[ée]r[ée]nice"})
    (finding,) = dlp.check(dlp.walk(message), rules)
    assert (finding.rule, finding.kind, finding.part, finding.snippet) == (
        "codename",
        "pattern",
        "1",
        "Bérénice",
    )


def test_card_numbers_are_found_and_masked_never_logged_whole() -> None:
    message = mime(
        text_part(f"Ma carte: {CARD}, exp 12/27. Commande 1234 5678 9012 3456."),
        attachment(CARD.encode(), b'Content-Type: application/octet-stream; name="c.bin"'),
    )
    findings = dlp.check(dlp.walk(message), dlp.Rules(cards=True))
    assert [(f.kind, f.part, f.snippet) for f in findings] == [("card", "1", "**** **** **** 1111")]
    assert "4111 1111" not in repr(findings)


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("4111111111111111", ["************1111"]),
        ("5555-5555-5555-4444 12345", ["****-****-****-4444"]),
        ("378282246310005", ["***********0005"]),  # 15-digit Amex test number
        ("4111111111111112", []),  # fails Luhn
        ("41111111111111110000000", []),  # part of a longer digit run
        ("4111  1111 1111 1111", []),  # two spaces end the run: 4 + 12 digits
        ("order 000123456789012345678", []),
    ],
)
def test_card_detector_examples(text: str, found: list[str]) -> None:
    assert [match.masked for match in dlp.card_numbers(text)] == found


# --- property tests ---------------------------------------------------------------------------


def reference_luhn(number: str) -> bool:
    digits = [int(c) for c in number]
    digits.reverse()
    total = 0
    for i, d in enumerate(digits):
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def reference_cards(text: str) -> list[tuple[int, int]]:
    """Written from the documented rule, character by character: runs of digit groups joined
    by one space or dash; from each group, the longest 13-19 digit Luhn-valid span."""
    spans = []
    i = 0
    while i < len(text):
        if not text[i].isdigit() or not text[i].isascii():
            i += 1
            continue
        groups = []  # (start, end) of each group of the run
        start = i
        while True:
            while i < len(text) and text[i] in "0123456789":
                i += 1
            groups.append((start, i))
            if i + 1 < len(text) and text[i] in " -" and text[i + 1] in "0123456789":
                i += 1
                start = i
                continue
            break
        g = 0
        while g < len(groups):
            best = None
            for h in range(g, len(groups)):
                number = "".join(text[a:b] for a, b in groups[g : h + 1])
                if 13 <= len(number) <= 19 and reference_luhn(number):
                    best = h
            if best is None:
                g += 1
            else:
                spans.append((groups[g][0], groups[best][1]))
                g = best + 1
    return spans


@given(st.text(alphabet="0123456789 -x", max_size=120))
@settings(max_examples=400, deadline=None)
def test_card_detector_agrees_with_reference(text: str) -> None:
    assert [(m.start, m.end) for m in dlp.card_numbers(text)] == reference_cards(text)


@given(st.text(alphabet="0123456789", min_size=1, max_size=25))
def test_luhn_agrees_with_reference(number: str) -> None:
    assert dlp.luhn(number) == reference_luhn(number)


@given(st.integers(min_value=10**12, max_value=10**19 - 1))
def test_every_luhn_valid_number_is_found(prefix: int) -> None:
    body = str(prefix)[:-1]
    check_digit = next(d for d in "0123456789" if reference_luhn(body + d))
    number = body + check_digit
    assert [m.masked[-4:] for m in dlp.card_numbers(f"pay {number} now")] == [number[-4:]]


FRAGMENTS = [
    b"Content-Type: multipart/mixed; boundary=b\r\n",
    b"Content-Type: message/rfc822\r\n",
    b"Content-Transfer-Encoding: base64\r\n",
    b"Content-Transfer-Encoding: quoted-printable\r\n",
    b"Content-Disposition: attachment; filename*=utf-8''%C3%A9\r\n",
    b"Content-Type: text/plain; charset=x-unknown\r\n",
    b"\r\n",
    b"--b\r\n",
    b"--b--\r\n",
    b"QUJD!!\r\n",
    b"=C3=A9=\r\n",
    b"\xff\xfe\x00",
    EXE[:20],
]


@given(st.binary(max_size=600))
@settings(max_examples=300, deadline=None)
def test_walker_never_raises_on_arbitrary_bytes(data: bytes) -> None:
    assert_walk_ok(data)


@given(st.lists(st.sampled_from(FRAGMENTS) | st.binary(max_size=20), max_size=40))
@settings(max_examples=300, deadline=None)
def test_walker_never_raises_on_mime_like_bytes(pieces: list[bytes]) -> None:
    assert_walk_ok(b"".join(pieces))


def assert_walk_ok(data: bytes) -> None:
    result = dlp.walk(data)
    assert result.parts  # always at least one part, or a malformed marker on one
    for part in result.parts:
        assert part.size == len(part.content)
        assert part.sha256 == hashlib.sha256(part.content).hexdigest()
    dlp.check(
        result, dlp.Rules(cards=True, type_mismatch=True, malformed=True, patterns={"a": "a"})
    )


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("archive.zip", b"PK\x03\x04" + bytes(60)),
        ("report.docx", b"PK\x03\x04" + bytes(60)),
        ("photo.JPEG", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(60)),
        ("backup.tgz", b"\x1f\x8b\x08" + bytes(60)),
        ("notes.txt", b"plain words, nothing to sniff"),
    ],
)
def test_files_that_fit_their_names_do_not_mismatch(name: str, content: bytes) -> None:
    header = f'Content-Type: application/octet-stream; name="{name}"'.encode()
    result = dlp.walk(mime(attachment(content, header)))
    assert dlp.check(result, dlp.Rules(type_mismatch=True)) == []


DOCS = Path(__file__).resolve().parents[2] / "docs" / "library.md"


async def test_the_documented_example_refuses_a_card_number(tmp_path: Path) -> None:
    section = DOCS.read_text().split("## `dlp`", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    hash_file = tmp_path / "blocked.sha256"
    hash_file.write_text(hashlib.sha256(EXE).hexdigest() + "\n")
    namespace: dict[str, object] = {}
    exec(code.replace("/etc/mailwarden/blocked.sha256", str(hash_file)), namespace)
    data: Any = namespace["data"]

    with pytest.raises(
        Reject, match=re.escape("card number (Luhn) in part 1 (**** **** **** 1111)")
    ):
        await data(None, None, as_message(mime(text_part(f"card {CARD}"))))
    assert await data(None, None, as_message(mime(text_part("nothing to see")))) is None


async def test_large_message_is_walked_off_the_event_loop_with_the_same_result() -> None:
    big = EXE + bytes(range(256)) * 2048  # 512 KiB: parsed and hashed in a thread
    raw = mime(attachment(big, b'Content-Type: application/pdf; name="big.pdf"'))
    result = await dlp.scan(as_message(raw))
    assert [(p.size, p.sha256) for p in result] == [(len(big), hashlib.sha256(big).hexdigest())]
    assert dlp.check(result, dlp.Rules(type_mismatch=True))[0].kind == "mismatch"
