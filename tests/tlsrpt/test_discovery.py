"""``_smtp._tls`` TXT records (RFC 8460 §3): the grammar, and the choice among several records
over real DNS (nsd on loopback)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.support.dns_server import dns_server

from mailwarden.lib import dns as lib_dns
from mailwarden.tlsrpt.discovery import (
    TlsRptRecord,
    TlsRptRecordError,
    lookup,
    mailto_address,
    parse_record,
)


def test_the_rfc_examples_parse() -> None:
    assert parse_record("v=TLSRPTv1;rua=mailto:reports@example.com") == TlsRptRecord(
        ("mailto:reports@example.com",)
    )
    record = parse_record(
        "v=TLSRPTv1; rua=https://reporting.example.com/v1/tlsrpt , mailto:tls%2Brpt@example.com;"
    )
    assert record.rua == ("https://reporting.example.com/v1/tlsrpt", "mailto:tls%2Brpt@example.com")
    assert mailto_address(record.rua[1]) == "tls+rpt@example.com"
    # Unknown extensions are ignored (§3: a superset must be accepted); unknown schemes too.
    record = parse_record("v=TLSRPTv1; x-future=yes; rua=ftp://example.com/x,mailto:a@example.com")
    assert record.destinations == ("mailto:a@example.com",)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("v=TLSRPTv2; rua=mailto:a@example.com", "does not start"),
        ("rua=mailto:a@example.com; v=TLSRPTv1", "does not start"),
        ("v=tlsrptv1; rua=mailto:a@example.com", "does not start"),  # %s: case-sensitive
        ("v=TLSRPTv1", "no rua"),
        ("v=TLSRPTv1; x=1", "no rua"),
        ("v=TLSRPTv1; rua=", "not a URI"),
        ("v=TLSRPTv1; rua=mailto:a b@example.com", "not a URI"),
        ("v=TLSRPTv1; rua", "not name=value"),
        ("v=TLSRPTv1; rua=mailto:a@example.com; bad name=1", "not a valid extension"),
    ],
)
def test_invalid_records_are_refused_with_the_reason(text: str, why: str) -> None:
    with pytest.raises(TlsRptRecordError, match=why):
        parse_record(text)


_URI_CHARS = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=",;"), min_size=1
)
_URIS = st.builds(
    lambda scheme, rest: f"{scheme}:{rest}", st.sampled_from(["mailto", "https"]), _URI_CHARS
)
_SPACE = st.sampled_from(["", " ", "\t", "  "])


@given(uris=st.lists(_URIS, min_size=1, max_size=4), space=_SPACE, trailing=st.booleans())
def test_any_valid_record_gives_back_its_uris(uris: list[str], space: str, trailing: bool) -> None:
    text = f"v=TLSRPTv1{space};{space}rua={f'{space},{space}'.join(uris)}"
    if trailing:
        text += f"{space};"
    assert parse_record(text).rua == tuple(uris)


@given(st.text(max_size=200))
def test_any_text_parses_or_says_why(text: str) -> None:
    try:
        record = parse_record(text)
    except TlsRptRecordError:
        return
    assert record.rua and text.startswith("v=TLSRPTv1")


ZONES = {
    "one.test": '_smtp._tls IN TXT "v=TLSRPTv1; " "rua=mailto:tlsrpt@one.test"\n'
    '_smtp._tls IN TXT "v=spf1 -all"\n',
    "two.test": '_smtp._tls IN TXT "v=TLSRPTv1; rua=mailto:a@two.test"\n'
    '_smtp._tls IN TXT "v=TLSRPTv1; rua=mailto:b@two.test"\n',
    "broken.test": '_smtp._tls IN TXT "v=TLSRPTv1; rua=mailto:a b"\n',
    "none.test": '@ IN TXT "v=TLSRPTv1; rua=mailto:not-here@none.test"\n',
}


async def test_lookup_takes_the_one_valid_record_or_none(tmp_path: Path) -> None:
    with dns_server(tmp_path / "dns", ZONES) as server:
        lib_dns.configure([server.address], timeout=2.0)
        try:
            # Strings of one record are joined; a record of another kind is discarded.
            assert await lookup("one.test") == TlsRptRecord(("mailto:tlsrpt@one.test",))
            # §3: not exactly one record, or an invalid one: no TLSRPT for that domain.
            assert await lookup("two.test") is None
            assert await lookup("broken.test") is None
            assert await lookup("none.test") is None
            assert await lookup("missing.one.test") is None
        finally:
            lib_dns.configure()
