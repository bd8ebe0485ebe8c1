"""DMARC evaluation (RFC 7489) against nsd on loopback publishing ``_dmarc`` records, SPF
records and a DKIM key; the record parser under Hypothesis."""

from __future__ import annotations

import base64
import random
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given
from hypothesis import strategies as st
from tests.support.dns_server import DnsServer, dns_server, silent_server

from mailwarden.lib import dkim, dmarc, dns, spf
from mailwarden.lib.dkim import DkimResult
from mailwarden.lib.spf import SpfResult
from mailwarden.policy.context import Message, memory_body
from mailwarden.policy.headers import Headers

ED_KEY = ed25519.Ed25519PrivateKey.generate()
ED_PEM = ED_KEY.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
)
ED_PUBLIC = base64.b64encode(
    ED_KEY.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
).decode()

ZONES = {
    "dmarc.test": f"""\
_dmarc      IN TXT "v=DMARC1; p=reject; sp=quarantine; adkim=s; rua=mailto:agg@dmarc.test"
@           IN TXT "v=spf1 ip4:192.0.2.0/24 -all"
bounce      IN TXT "v=spf1 ip4:192.0.2.0/24 -all"
_dmarc.own  IN TXT "v=DMARC1; p=none"
mw._domainkey IN TXT "v=DKIM1; k=ed25519; p={ED_PUBLIC}"
""",
    "pct.test": '_dmarc IN TXT "v=DMARC1; p=reject; pct=0"\n',
    "half.test": '_dmarc IN TXT "v=DMARC1; p=quarantine; pct=50"\n',
    "two.test": '_dmarc IN TXT "v=DMARC1; p=none"\n_dmarc IN TXT "v=DMARC1; p=reject"\n',
    "bad.test": '_dmarc IN TXT "v=DMARC1; p=bogus"\n',
    "ruaonly.test": '_dmarc IN TXT "v=DMARC1; p=bogus; rua=mailto:d@ruaonly.test"\n',
    "spfonly.test": '_dmarc IN TXT "v=spf1 -all"\n',
    "none.test": "@ IN A 192.0.2.1\n",
    # A real public suffix served locally: the organizational domain of mail.shop.co.uk is
    # shop.co.uk (the Public Suffix List), not co.uk as "the last two labels" would say.
    "co.uk": '_dmarc.shop IN TXT "v=DMARC1; p=reject"\n_dmarc IN TXT "v=DMARC1; p=none"\n',
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsServer]:
    with dns_server(tmp_path_factory.mktemp("nsd-dmarc"), ZONES, ("broken.test",)) as nsd:
        yield nsd


@pytest.fixture
def configured(server: DnsServer) -> Iterator[DnsServer]:
    dns.configure([server.address], timeout=3.0)
    yield server
    dns.configure()


def message(from_field: bytes = b"From: Alice <alice@dmarc.test>\r\n") -> Message:
    header = from_field + b"To: bob@example.org\r\nSubject: hello\r\n"
    body = b"Hi Bob.\r\n"
    return Message(Headers.parse(header), len(body), memory_body(body))


def spf_pass(domain: str) -> SpfResult:
    return SpfResult("pass", "", "mailfrom", domain)


def dkim_result(domain: str, result: str = "pass") -> DkimResult:
    return DkimResult(result, domain, "mw", "ed25519-sha256")  # type: ignore[arg-type]


async def test_real_spf_and_dkim_pass_aligns(configured: DnsServer) -> None:
    msg = message()
    await dkim.sign(msg, domain="dmarc.test", selector="mw", key=ED_PEM)
    dkim_results = await dkim.verify(msg)
    spf_result = await spf.check("192.0.2.7", "bounce@bounce.dmarc.test", "mx.example.org")
    assert [r.result for r in dkim_results] == ["pass"] and spf_result.result == "pass"
    result = await dmarc.evaluate(msg, spf=spf_result, dkim=dkim_results)
    assert result.result == "pass" and result
    assert result.spf_aligned and result.dkim_aligned and result.dkim_domain == "dmarc.test"
    assert (result.from_domain, result.policy_domain, result.policy) == (
        "dmarc.test",
        "dmarc.test",
        "reject",
    )
    assert result.disposition == "none"
    assert result.record is not None and result.record.rua == ("mailto:agg@dmarc.test",)


async def test_real_spf_fail_without_dkim_is_rejected(configured: DnsServer) -> None:
    spf_result = await spf.check("198.51.100.9", "alice@dmarc.test", "mx.example.org")
    assert spf_result.result == "fail"
    result = await dmarc.evaluate(message(), spf=spf_result, dkim=[])
    assert (result.result, result.disposition) == ("fail", "reject") and not result
    assert result.reason == "no aligned SPF or DKIM pass"


async def test_relaxed_spf_alignment_accepts_a_subdomain(configured: DnsServer) -> None:
    result = await dmarc.evaluate(message(), spf=spf_pass("bounce.dmarc.test"))
    assert result.result == "pass" and result.spf_aligned and not result.dkim_aligned


async def test_strict_dkim_alignment_wants_the_same_domain(configured: DnsServer) -> None:
    # adkim=s at dmarc.test: d=mail.dmarc.test does not align with From dmarc.test.
    result = await dmarc.evaluate(message(), dkim=[dkim_result("mail.dmarc.test")])
    assert (result.result, result.disposition, result.dkim_aligned) == ("fail", "reject", False)
    result = await dmarc.evaluate(message(), dkim=[dkim_result("dmarc.test")])
    assert result.result == "pass" and result.dkim_domain == "dmarc.test"


async def test_failed_or_foreign_dkim_does_not_align(configured: DnsServer) -> None:
    results = [dkim_result("dmarc.test", "fail"), dkim_result("mailer.example.net")]
    result = await dmarc.evaluate(message(), spf=spf_pass("mailer.example.net"), dkim=results)
    assert (result.result, result.spf_aligned, result.dkim_aligned) == ("fail", False, False)


async def test_subdomain_without_record_gets_sp_of_the_organizational_domain(
    configured: DnsServer,
) -> None:
    result = await dmarc.evaluate(message(b"From: news@letters.dmarc.test\r\n"))
    assert (result.result, result.policy, result.disposition) == (
        "fail",
        "quarantine",
        "quarantine",
    )
    assert (result.from_domain, result.policy_domain) == ("letters.dmarc.test", "dmarc.test")


async def test_subdomain_record_of_its_own_gives_its_p(configured: DnsServer) -> None:
    result = await dmarc.evaluate(message(b"From: x@own.dmarc.test\r\n"))
    assert (result.policy, result.policy_domain, result.disposition) == (
        "none",
        "own.dmarc.test",
        "none",
    )


async def test_organizational_domain_follows_the_public_suffix_list(configured: DnsServer) -> None:
    result = await dmarc.evaluate(message(b"From: a@mail.shop.co.uk\r\n"))
    assert (result.policy_domain, result.policy) == ("shop.co.uk", "reject")
    assert dmarc.organizational_domain("mail.shop.co.uk") == "shop.co.uk"
    assert dmarc.organizational_domain("www.example.org") == "example.org"
    assert dmarc.aligned("bounce.shop.co.uk", "shop.co.uk")
    assert not dmarc.aligned("other.co.uk", "shop.co.uk")


async def test_pct_zero_weakens_reject_to_quarantine(configured: DnsServer) -> None:
    result = await dmarc.evaluate(message(b"From: a@pct.test\r\n"))
    assert (result.result, result.policy, result.disposition) == ("fail", "reject", "quarantine")
    assert result.sampled_out and "pct=0" in result.reason


async def test_pct_samples_with_the_given_generator(configured: DnsServer) -> None:
    outcomes = [
        (await dmarc.evaluate(message(b"From: a@half.test\r\n"), rng=random.Random(i))).disposition
        for i in range(40)
    ]
    expected = ["quarantine" if random.Random(i).random() * 100 < 50 else "none" for i in range(40)]
    assert outcomes == expected and set(outcomes) == {"none", "quarantine"}


async def test_no_record_is_none(configured: DnsServer) -> None:
    for sender in (b"a@none.test", b"a@spfonly.test"):  # a non-DMARC TXT is discarded
        result = await dmarc.evaluate(message(b"From: " + sender + b"\r\n"))
        assert (result.result, result.disposition, result.policy) == ("none", "none", None)


async def test_unusable_records_are_permerror(configured: DnsServer) -> None:
    two = await dmarc.evaluate(message(b"From: a@two.test\r\n"))
    assert two.result == "permerror" and "2 DMARC records at _dmarc.two.test" in two.reason
    bad = await dmarc.evaluate(message(b"From: a@bad.test\r\n"))
    assert bad.result == "permerror" and "p='bogus'" in bad.reason


async def test_invalid_p_with_rua_reads_as_none(configured: DnsServer) -> None:
    result = await dmarc.evaluate(message(b"From: a@ruaonly.test\r\n"))
    assert (result.result, result.policy, result.disposition) == ("fail", "none", "none")
    assert any("read as p=none" in p for p in result.problems)


async def test_dns_failure_is_temperror(configured: DnsServer) -> None:
    result = await dmarc.evaluate(message(b"From: a@broken.test\r\n"))
    assert result.result == "temperror" and "_dmarc.broken.test" in result.reason
    with silent_server() as address:
        dns.configure([address], timeout=0.5)
        result = await dmarc.evaluate(message())
    assert result.result == "temperror" and "no answer within 0.5s" in result.reason


@pytest.mark.parametrize(
    ("from_fields", "reason"),
    [
        (b"", "the message has 0 From fields"),
        (b"From: a@dmarc.test\r\nFrom: b@dmarc.test\r\n", "the message has 2 From fields"),
        (b"From: a@dmarc.test, b@pct.test\r\n", "the From field has 2 addresses"),
        (b"From: undisclosed:;\r\n", "the From field has 0 addresses"),
        (b"From: root@localhost\r\n", "'localhost' is not a domain name"),
        (b"From: a@\r\n", "the From field cannot be parsed"),
    ],
)
async def test_no_single_from_domain_is_permerror(
    configured: DnsServer, from_fields: bytes, reason: str
) -> None:
    result = await dmarc.evaluate(message(from_fields))
    assert (result.result, result.disposition) == ("permerror", "none")
    assert reason in result.reason


async def test_encoded_display_name_with_a_comma_is_one_address(configured: DnsServer) -> None:
    # Decoded, "Smith, John" would look like two addresses: the From is parsed as sent.
    msg = message(b"From: =?utf-8?q?Smith=2C_John?= <john@dmarc.test>\r\n")
    result = await dmarc.evaluate(await msg.raw(), spf=spf_pass("dmarc.test"))
    assert result.result == "pass" and result.from_domain == "dmarc.test"


async def test_internationalised_from_domain_is_looked_up_as_a_label(
    configured: DnsServer,
) -> None:
    result = await dmarc.evaluate(b"From: a@m\xc3\xbcller.dmarc.test\r\n\r\nhi\r\n")
    # xn--mller-kva.dmarc.test has no record: dmarc.test's sp= applies.
    assert (result.from_domain, result.policy_domain) == ("xn--mller-kva.dmarc.test", "dmarc.test")
    assert result.policy == "quarantine"


@given(st.binary(max_size=120))
def test_from_parsing_never_crashes(value: bytes) -> None:
    domain, why = dmarc._from_domain(b"From: " + value + b"\r\nTo: b@example.org\r\n\r\n")
    assert (domain is None) == bool(why)


def test_record_parser_reads_every_tag() -> None:
    record = dmarc.parse_record(
        "v=DMARC1;p=Quarantine; sp=none; pct=25; adkim=s; aspf=s; "
        "rua=mailto:a@x.test!10m, mailto:b@x.test; ruf=mailto:f@x.test; fo=1:d; ri=3600; x=y;"
    )
    assert record == dmarc.DmarcRecord(
        policy="quarantine",
        subdomain_policy="none",
        pct=25,
        adkim="s",
        aspf="s",
        rua=("mailto:a@x.test!10m", "mailto:b@x.test"),
        ruf=("mailto:f@x.test",),
        fo="1:d",
        ri=3600,
    )


def test_record_parser_falls_back_to_defaults_and_says_so() -> None:
    record = dmarc.parse_record("v=DMARC1; p=reject; pct=150; adkim=x; rua=nonsense")
    assert (record.pct, record.adkim, record.rua) == (100, "r", ())
    assert record.problems == (
        "rua: 'nonsense' is not a URI, ignored",
        "pct='150' is not 0 to 100, read as 100",
        "adkim='x' is not r or s, read as r",
    )


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", "starts with v=DMARC1"),
        ("p=reject; v=DMARC1", "starts with v=DMARC1"),
        ("v=DMARC2; p=reject", "starts with v=DMARC1"),
        ("v=DMARC1", "no p= tag"),
        ("v=DMARC1; p=reject; p=none", "tag 'p' appears twice"),
        ("v=DMARC1; reject", "is not tag=value"),
    ],
)
def test_record_parser_refuses_garbage_clearly(text: str, error: str) -> None:
    with pytest.raises(dmarc.DmarcRecordError, match=error):
        dmarc.parse_record(text)


TAGS = st.sampled_from(["v", "p", "sp", "pct", "adkim", "aspf", "rua", "ruf", "fo", "ri", "x"])
VALUES = st.one_of(
    st.sampled_from(["DMARC1", "none", "reject", "quarantine", "r", "s", "50", "mailto:a@b.c"]),
    st.text(max_size=20),
)


@given(st.lists(st.tuples(TAGS, VALUES), max_size=8), st.sampled_from([";", "; ", " ;"]))
def test_record_parser_never_crashes_on_tag_lists(pairs: list[tuple[str, str]], sep: str) -> None:
    _parses_or_refuses(sep.join(f"{tag}={value}" for tag, value in pairs))


@given(st.text(max_size=200))
def test_record_parser_never_crashes_on_any_text(text: str) -> None:
    _parses_or_refuses(text)
    _parses_or_refuses("v=DMARC1; " + text)


def _parses_or_refuses(text: str) -> None:
    try:
        record = dmarc.parse_record(text)
    except dmarc.DmarcRecordError as error:
        assert str(error)
        return
    assert record.policy in ("none", "quarantine", "reject")
    assert 0 <= record.pct <= 100 and record.adkim in ("r", "s") and record.aspf in ("r", "s")


_HEADER_LINES = [
    b"From: alice@example.org",
    b"from: Bob <bob@example.net>",
    b"FROM:carol@example.com",
    b" (continued) dave@example.org",
    b"\tmore",
    b"From mbox-envelope Thu Jan  1 00:00:00 2026",
    b"From : spaced@example.org",
    b"Subject: hello",
    b'Content-Type: multipart/mixed; boundary="x"; charset=utf-8',
    b"Received: from mx.example.net by mx.example.org",
    b"not a field line",
    b"",
    b"From: =?utf-8?q?J=C3=B6rg?= <j@\xc3\xa9xample.org>",
    b"From: one@example.org, two@example.org",
]


def _from_domain_by_full_parse(header_block: bytes) -> tuple[str | None, str]:
    """The model: the whole header section through the standard library's parser, as
    _from_domain did before it parsed only the From fields."""
    original = dmarc._from_fields
    dmarc._from_fields = lambda block: block  # type: ignore[assignment]
    try:
        return dmarc._from_domain(header_block)
    finally:
        dmarc._from_fields = original  # type: ignore[assignment]


@given(
    st.lists(st.sampled_from(_HEADER_LINES), max_size=8),
    st.sampled_from([b"\r\n", b"\n"]),
)
def test_from_domain_reads_the_from_fields_as_a_full_parse_does(
    lines: list[bytes], newline: bytes
) -> None:
    block = b"".join(line + newline for line in lines) + newline
    assert dmarc._from_domain(block) == _from_domain_by_full_parse(block)
