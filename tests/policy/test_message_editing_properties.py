"""Properties of body editing: any message, any sequence of edits, the result is valid MIME.

Messages are built by the stdlib (text in four transfer encodings and three charsets, binary
attachments, nested multiparts, enclosed messages); edits are drawn at random. After every
sequence the output must parse without defects, keep lines within 998 octets, stay 7-bit if
the input was, report its own size, and carry every part no edit touched byte for byte.
"""

from __future__ import annotations

import asyncio
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailwarden.policy import editing, mime
from mailwarden.policy.context import Message, memory_body
from mailwarden.policy.headers import Headers

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ascii_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=200)
any_text = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\u2028\u2029"),
    max_size=200,
)
lines = st.lists(st.one_of(ascii_text, any_text), min_size=1, max_size=5).map("\n".join)


@st.composite
def text_part(draw: st.DrawFn, seven_bit: bool) -> EmailMessage:
    part = EmailMessage()
    subtype = draw(st.sampled_from(["plain", "html"]))
    if seven_bit:
        body = draw(st.lists(ascii_text, min_size=1, max_size=5).map("\n".join))
        charset = draw(st.sampled_from(["us-ascii", "utf-8"]))
        cte = draw(st.sampled_from(["7bit", "quoted-printable", "base64"]))
    else:
        body = draw(lines)
        charset = draw(st.sampled_from(["utf-8", "iso-8859-1"]))
        cte = draw(st.sampled_from(["8bit", "quoted-printable", "base64"]))
        if charset == "iso-8859-1":
            body = body.encode("latin-1", "replace").decode("latin-1")
    if subtype == "html":
        body = f"<html><body>{body}</body></html>"
    if cte == "7bit" and any(len(line) > 900 for line in body.splitlines()):
        cte = "quoted-printable"
    part.set_content(body + "\n", subtype=subtype, charset=charset, cte=cte)
    if draw(st.booleans()) and draw(st.booleans()):
        part["Content-Disposition"] = 'attachment; filename="note.txt"'
    return part


@st.composite
def binary_part(draw: st.DrawFn) -> EmailMessage:
    part = EmailMessage()
    data = draw(st.binary(max_size=300))
    part.set_content(data, maintype="application", subtype="octet-stream", filename="f.bin")
    return part


def tree(seven_bit: bool) -> st.SearchStrategy[EmailMessage]:
    leaves = st.one_of(text_part(seven_bit), binary_part())

    def extend(children: st.SearchStrategy[EmailMessage]) -> st.SearchStrategy[EmailMessage]:
        return st.one_of(
            st.tuples(
                st.sampled_from(["mixed", "alternative", "related"]),
                st.lists(children, min_size=1, max_size=3),
            ).map(lambda args: _multipart(*args)),
            children.map(_enclosed),
        )

    return st.recursive(leaves, extend, max_leaves=6)


def _multipart(subtype: str, children: list[EmailMessage]) -> EmailMessage:
    container = EmailMessage()
    container.set_type(f"multipart/{subtype}")
    for child in children:
        container.attach(child)
    return container


def _enclosed(inner: EmailMessage) -> EmailMessage:
    inner["Subject"] = "enclosed"
    part = EmailMessage()
    part.set_content(inner)
    return part


@st.composite
def messages(draw: st.DrawFn) -> tuple[bytes, bool]:
    seven_bit = draw(st.booleans())
    root = draw(tree(seven_bit))
    root["From"] = "alice@example.org"
    root["Subject"] = "property"
    if "MIME-Version" not in root:
        root["MIME-Version"] = "1.0"
    # Boundaries chosen here: the stdlib would draw them from ``random``, out of Hypothesis's
    # reach (its replays would not be the same message).
    for number, part in enumerate(root.walk()):
        if part.is_multipart() and part.get_content_maintype() == "multipart":
            part.set_boundary(f"=_part_{number}_=")
    return root.as_bytes(policy=policy.SMTP), seven_bit


edit = st.one_of(
    st.tuples(st.just("append"), any_text),
    st.tuples(st.just("prepend"), any_text),
    st.tuples(st.just("replace"), st.integers(0, 50), st.one_of(any_text, st.binary(max_size=99))),
    st.tuples(st.just("remove"), st.integers(0, 50)),
)


def parse(raw: bytes) -> EmailMessage:
    parsed = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(parsed, EmailMessage)
    return parsed


def defects(message: EmailMessage) -> list[Any]:
    return [defect for part in message.walk() for defect in part.defects]


def below(entity: mime.Entity, ancestor: mime.Entity) -> bool:
    node: mime.Entity | None = entity
    while node is not None:
        if node is ancestor:
            return True
        node = node.parent
    return False


async def apply(raw: bytes, edits: list[tuple[Any, ...]]) -> tuple[Message, bytes, list[Any]]:
    """Apply ``edits``; returns the message, its original body, and the original leaves no
    edit touched (replaced, removed, given text, or inside one of those)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    message = Message(Headers.parse(head + b"\r\n"), len(body), memory_body(body))
    await message.parts()
    top = message._tree
    assert top is not None
    leaves = [e for _, e in mime.numbered(top) if e.kind == "leaf" and not e.top]
    touched: list[mime.Entity] = []
    for operation, *args in edits:
        if operation in ("append", "prepend"):
            method = message.append_text if operation == "append" else message.prepend_text
            for path in await method(args[0]):
                touched.append(editing.find(top, path)[1])
            continue
        parts = await message.parts()
        path = parts[args[0] % len(parts)].path
        target = editing.find(top, path)[1]
        try:
            if operation == "replace":
                await message.replace_part(path, args[1], filename="new.bin")
            else:
                await message.remove_part(path)
        except ValueError:
            assert operation == "remove"  # only removing can be refused (the last part)
            continue
        touched.append(target)
    untouched = [leaf for leaf in leaves if not any(below(leaf, edited) for edited in touched)]
    return message, body, untouched


@SETTINGS
@given(messages(), st.lists(edit, max_size=5))
def test_any_edits_give_valid_mime_and_keep_untouched_parts(
    generated: tuple[bytes, bool], edits: list[tuple[Any, ...]]
) -> None:
    raw, seven_bit = generated
    assert not defects(parse(raw))
    message, body, untouched = asyncio.run(apply(raw, edits))
    out = asyncio.run(message.raw())
    assert message.size == len(out)
    parsed = parse(out)
    assert not defects(parsed), defects(parsed)
    assert all(len(line) <= 998 for line in out.split(b"\r\n"))
    assert b"\r" not in out.replace(b"\r\n", b"") and b"\n" not in out.replace(b"\r\n", b"")
    if seven_bit:
        assert out.isascii()
    assert message._tree is not None
    present = [entity for _, entity in mime.numbered(message._tree)]
    for leaf in untouched:
        assert any(leaf is entity for entity in present)  # only removal takes a part away
        assert body[leaf.start : leaf.end] in out
    if any(operation in ("append", "prepend") for operation, *_ in edits):
        assert parsed["MIME-Version"] == "1.0"


@SETTINGS
@given(messages(), any_text.filter(lambda t: t.strip() != ""))
def test_footer_text_is_readable_in_the_text_parts(
    generated: tuple[bytes, bool], text: str
) -> None:
    raw, _ = generated
    message, _, _ = asyncio.run(apply(raw, [("append", text)]))
    out = asyncio.run(message.raw())
    parsed = parse(out)
    plain = _first_body_plain(parsed, top=True)
    if plain is None:
        return
    content = plain.get_content().replace("\r\n", "\n")
    assert content.endswith(text + "\n")


def _first_body_plain(part: EmailMessage, *, top: bool = False) -> EmailMessage | None:
    """The text/plain part a footer goes to, found independently of the code under test: the
    first one reached without entering an attachment or an enclosed message."""
    if not top and part.get_content_disposition() == "attachment":
        return None
    if part.get_content_maintype() == "multipart":
        for child in part.iter_parts():
            found = _first_body_plain(child)
            if found is not None:
                return found
        return None
    return part if part.get_content_type() == "text/plain" else None


boundaries = st.text(st.sampled_from("abcXYZ019'()+_,-./:=?"), min_size=1, max_size=12)


@SETTINGS
@given(
    boundaries,
    st.sampled_from(["mixed", "alternative", "digest"]),
    st.lists(st.one_of(st.binary(max_size=60), st.sampled_from(["open", "close", "blank"]))),
)
def test_reassembling_any_body_gives_back_its_octets(
    boundary: str, kind: str, pieces: list[bytes | str]
) -> None:
    """The parser never raises on what a client sent (random octets with delimiters strewn
    in), and a tree whose every entity is marked edited, but unchanged, writes out exactly
    the octets it was read from."""
    marks = {
        "open": f"\r\n--{boundary}\r\n".encode(),
        "close": f"\r\n--{boundary}--\r\n".encode(),
        "blank": b"\r\n\r\n",
    }
    body = b"".join(marks[p] if isinstance(p, str) else p for p in pieces)
    headers = Headers.parse(f'Content-Type: multipart/{kind}; boundary="{boundary}"\r\n'.encode())
    top = mime.parse(body, headers)
    for _, entity in mime.numbered(top):
        entity.mark_dirty()
    top.mark_dirty()
    assert b"".join(mime.chunks(top, body)) == body
    assert mime.size(top, body) == len(body)


def test_a_part_without_a_blank_line_is_not_taken_as_megabytes_of_fields(
    monkeypatch: Any,
) -> None:
    monkeypatch.setattr(mime, "MAX_PART_HEADER", 64)
    body = b"--b\r\nContent-Type: text/plain\r\n" + b"x" * 200 + b"\r\n--b--\r\n"
    top = mime.parse(body, Headers.parse(b'Content-Type: multipart/mixed; boundary="b"\r\n'))
    ((_, part),) = top.children
    assert len(part.headers) == 0 and part.body_start == part.start
    top.mark_dirty()
    part.mark_dirty()
    assert b"".join(mime.chunks(top, body)) == body
