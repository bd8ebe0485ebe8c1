"""The editable header section a data hook gets (mailwarden.policy.headers.Headers)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailwarden.policy.headers import Headers

# --- round trip: what the script does not touch is stored byte for byte ----------------------

field_names = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=":"),
    min_size=1,
    max_size=20,
)
line_endings = st.sampled_from([b"\r\n", b"\n", b"\r"])
value_bytes = st.binary(max_size=60).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


@st.composite
def header_blocks(draw: st.DrawFn) -> bytes:
    """Realistic blocks: fields with folded continuation lines and any line ending, plus the
    occasional junk line (no colon) that a real client may send."""
    lines = []
    for _ in range(draw(st.integers(0, 8))):
        if draw(st.integers(0, 9)) == 0:
            lines.append(draw(value_bytes) + draw(line_endings))
            continue
        name = draw(field_names).encode()
        lines.append(name + b":" + draw(value_bytes) + draw(line_endings))
        for _ in range(draw(st.integers(0, 2))):
            fold = draw(st.sampled_from([b" ", b"\t"]))
            lines.append(fold + draw(value_bytes) + draw(line_endings))
    return b"".join(lines)


@given(header_blocks())
def test_parse_then_to_bytes_round_trips_header_blocks(block: bytes) -> None:
    assert Headers.parse(block).to_bytes() == block


@given(st.binary(max_size=300))
def test_parse_then_to_bytes_round_trips_any_bytes(block: bytes) -> None:
    headers = Headers.parse(block)
    assert headers.to_bytes() == block
    assert headers.modified is False


@given(header_blocks(), field_names)
def test_adding_and_deleting_a_new_field_restores_the_original(block: bytes, name: str) -> None:
    headers = Headers.parse(block)
    name = f"X-Test-{name}"
    if name in headers:
        return  # deleting would also remove the original field of that name
    headers.add(name, "value")
    assert headers.to_bytes() == f"{name}: value\r\n".encode() + block
    assert headers.delete(name) == 1
    assert headers.to_bytes() == block


# --- reading ---------------------------------------------------------------------------------

BLOCK = (
    b"Received: from a.example ([192.0.2.1])\r\n"
    b"\tby mx.example.com; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    b"Received: from b.example\r\n"
    b"From: Alice <alice@example.com>\r\n"
    b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?= aus\r\n"
    b" =?iso-8859-1?q?K=F6ln?=\r\n"
)


def test_get_unfolds_decodes_and_ignores_case() -> None:
    headers = Headers.parse(BLOCK)
    assert headers.get("subject") == "Grüße aus Köln"
    assert headers.get("RECEIVED") == (
        "from a.example ([192.0.2.1])\tby mx.example.com; Mon, 1 Jan 2024 00:00:00 +0000"
    )
    assert headers.get("To") is None
    assert headers.get("To", "nobody") == "nobody"


def test_get_all_iteration_len_and_contains() -> None:
    headers = Headers.parse(BLOCK)
    assert headers.get_all("received")[1] == "from b.example"
    assert len(headers.get_all("Received")) == 2
    assert headers.get_all("Cc") == []
    assert [name for name, _ in headers] == ["Received", "Received", "From", "Subject"]
    assert len(headers) == 4
    assert "from" in headers
    assert "Cc" not in headers
    assert 42 not in headers


# --- editing ---------------------------------------------------------------------------------


def test_add_puts_the_field_at_the_top_by_default_or_at_the_end() -> None:
    headers = Headers.parse(b"From: a@example.com\r\n")
    headers.add("X-First", "1")
    headers.add("X-Last", "2", at_top=False)
    assert headers.to_bytes() == b"X-First: 1\r\nFrom: a@example.com\r\nX-Last: 2\r\n"
    assert headers.modified is True


def test_set_replaces_the_first_in_place_and_removes_the_rest() -> None:
    headers = Headers.parse(b"A: 1\r\nSubject: one\r\nB: 2\r\nsubject: two\r\nC: 3\r\n")
    headers.set("Subject", "new")
    assert headers.to_bytes() == b"A: 1\r\nSubject: new\r\nB: 2\r\nC: 3\r\n"


def test_set_adds_a_missing_field_at_the_end() -> None:
    headers = Headers.parse(b"From: a@example.com\r\n")
    headers.set("Subject", "hello")
    assert headers.to_bytes() == b"From: a@example.com\r\nSubject: hello\r\n"


def test_set_writes_non_ascii_as_utf8() -> None:
    headers = Headers.parse(b"")
    headers.set("Subject", "Grüße")
    assert headers.to_bytes() == "Subject: Grüße\r\n".encode()
    assert headers.get("Subject") == "Grüße"


def test_delete_removes_every_field_of_that_name_and_counts_them() -> None:
    headers = Headers.parse(BLOCK)
    assert headers.delete("received") == 2
    assert headers.to_bytes().startswith(b"From: Alice")
    assert headers.modified is True


def test_deleting_an_absent_field_changes_nothing() -> None:
    headers = Headers.parse(BLOCK)
    assert headers.delete("X-Absent") == 0
    assert headers.modified is False
    assert headers.to_bytes() == BLOCK


# --- no header injection ---------------------------------------------------------------------


@given(
    st.text(max_size=20),
    st.sampled_from(["\r", "\n", "\r\n"]),
    st.text(max_size=20),
)
def test_cr_or_lf_in_a_value_raises_and_changes_nothing(
    before: str, line_break: str, after: str
) -> None:
    headers = Headers.parse(BLOCK)
    value = before + line_break + after
    for edit in (
        lambda: headers.add("X-Injected", value),
        lambda: headers.add("X-Injected", value, at_top=False),
        lambda: headers.set("Subject", value),
        lambda: headers.set("X-Injected", value),
    ):
        with pytest.raises(ValueError, match="CR or LF"):
            edit()
    assert headers.to_bytes() == BLOCK
    assert headers.modified is False


@pytest.mark.parametrize("name", ["", "Bad Name", "Colon:", "Tab\tName", "Nämé", "X\r\nBcc"])
def test_invalid_field_names_raise(name: str) -> None:
    headers = Headers.parse(BLOCK)
    with pytest.raises(ValueError, match="invalid header field name"):
        headers.add(name, "value")
    with pytest.raises(ValueError, match="invalid header field name"):
        headers.set(name, "value")
    assert headers.to_bytes() == BLOCK


def test_add_folded_keeps_the_bytes_and_refuses_injection() -> None:
    headers = Headers.parse(b"From: a@example.org\r\n")
    signature = b"DKIM-Signature: v=1; a=rsa-sha256;\r\n\td=example.org; s=sel;\r\n b=abc"
    headers.add_folded(signature)
    assert headers.to_bytes() == signature + b"\r\nFrom: a@example.org\r\n"
    assert headers.get("DKIM-Signature") == "v=1; a=rsa-sha256;\td=example.org; s=sel; b=abc"
    for bad in (
        b"X-A: one\r\nX-Injected: two",  # a second field, not a continuation
        b"X-A: one\nbare",  # a bare LF
        b"Bad Name: x",
        b"no colon",
    ):
        with pytest.raises(ValueError):
            headers.add_folded(bad)
    assert len(headers) == 2


def test_add_folded_at_the_end() -> None:
    headers = Headers.parse(b"From: a@example.org\r\n")
    field = b'Content-Disposition: attachment;\r\n filename="a.pdf"\r\n'
    headers.add_folded(field, at_top=False)
    assert headers.to_bytes() == b"From: a@example.org\r\n" + field
    assert headers.modified
