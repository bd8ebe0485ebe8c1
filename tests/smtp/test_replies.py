"""The reply catalogue (RFC 5321 §4.2, RFC 3463 enhanced codes, RFC 2034)."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailwarden.smtp import replies
from mailwarden.smtp.replies import Reply

from .helpers import parse_replies

CATALOGUE = replies.catalogue()
# RFC 2034 §3: no enhanced code on the 220 greeting or the EHLO/HELO reply; the 354 go-ahead
# is not a status either. These are the only replies built without one.
WITHOUT_ENHANCED_CODE = {"START_DATA"}


def test_every_reply_the_code_names_is_in_the_catalogue() -> None:
    # The consistency tests below run over the catalogue; a reply the server sends that the
    # catalogue leaves out would escape them.
    source = Path(replies.__file__).resolve().parents[1]
    named = {
        match.group(1)
        for path in source.rglob("*.py")
        for match in re.finditer(r"\breplies\.([A-Z][A-Z0-9_]+)\b", path.read_text())
    }
    assert {"TOO_MANY_RECIPIENTS", "BARE_LINE_ENDING", "MESSAGE_QUEUED"} <= named
    assert sorted(named - set(CATALOGUE)) == []


@pytest.mark.parametrize("name", sorted(CATALOGUE))
def test_enhanced_code_class_matches_reply_code(name: str) -> None:
    reply = CATALOGUE[name]
    if name in WITHOUT_ENHANCED_CODE:
        assert reply.enhanced == ""
        return
    match = re.fullmatch(r"([245])\.(\d{1,3})\.(\d{1,3})", reply.enhanced)
    assert match, f"{name}: {reply.enhanced!r} is not class.subject.detail"
    assert match.group(1) == str(reply.code)[0], name
    # RFC 3463 §3: subjects 0 (other) to 7 (security or policy).
    assert 0 <= int(match.group(2)) <= 7, name
    assert reply.text, name


def test_exceptions_without_enhanced_code_are_exactly_the_rfc_2034_ones() -> None:
    missing = {name for name, reply in CATALOGUE.items() if not reply.enhanced}
    assert missing == WITHOUT_ENHANCED_CODE
    assert CATALOGUE["START_DATA"].code == 354
    assert replies.greeting("mx.example").enhanced == ""
    assert replies.greeting("mx.example").code == 220
    assert replies.helo_reply("mx.example").enhanced == ""
    ehlo = replies.ehlo_reply("mx.example", "client", ["PIPELINING", "SIZE 10"])
    assert ehlo.enhanced == ""
    assert ehlo.encode() == b"250-mx.example greets client\r\n250-PIPELINING\r\n250 SIZE 10\r\n"


@pytest.mark.parametrize(
    ("code", "enhanced"), [(250, "5.0.0"), (550, "2.0.0"), (450, "5.1.1"), (199, ""), (600, "")]
)
def test_inconsistent_replies_cannot_be_built(code: int, enhanced: str) -> None:
    with pytest.raises(ValueError):
        Reply(code, enhanced, "text")


def test_enhanced_code_on_every_line_of_a_multiline_reply() -> None:
    """RFC 5321 §4.2.1: ``code-`` on all lines but the last, ``code SP`` on the last;
    RFC 2034 §4: the enhanced code leads the text of every line."""
    reply = Reply(550, "5.7.1", "first", ("second", "third"))
    assert reply.encode() == (b"550-5.7.1 first\r\n550-5.7.1 second\r\n550 5.7.1 third\r\n")
    assert Reply(250, "2.0.0", "only").encode() == b"250 2.0.0 only\r\n"


def test_reply_properties() -> None:
    assert replies.OK.is_positive and not replies.OK.is_transient
    assert replies.TOO_MANY_RECIPIENTS.is_transient
    assert replies.BAD_SEQUENCE.is_permanent


_any_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=60
) | st.text(alphabet=st.sampled_from("\r\n\x00\x85\u2028\t a.\x1b\x7f"), max_size=20)


@given(text=_any_text, more=st.lists(_any_text, max_size=3))
def test_encode_never_splits_or_smuggles_control_characters(text: str, more: list[str]) -> None:
    encoded = Reply(451, "4.3.0", text, tuple(more)).encode()
    parsed = parse_replies(encoded)  # asserts CRLF framing and code on each line
    assert len(parsed) == 1
    assert len(parsed[0].lines) == 1 + len(more)
    for line in parsed[0].lines:
        assert not any(unicodedata.category(ch) == "Cc" for ch in line), line
        assert "\u2028" not in line and "\u2029" not in line


@given(raw=st.binary(max_size=200))
def test_quote_for_reply_is_ascii_printable_and_capped(raw: bytes) -> None:
    quoted = replies.quote_for_reply(raw, 40)
    assert len(quoted) <= 40
    assert all(0x20 <= ord(ch) < 0x7F for ch in quoted)
