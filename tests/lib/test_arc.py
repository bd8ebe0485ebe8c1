"""ARC sealing and chain validation (RFC 8617) against nsd on loopback publishing the sealers'
keys. Every chain is also checked by Perl's Mail::DKIM ARC verifier (a separate
implementation from dkimpy, with its own DNS lookups to nsd)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.support.dns_server import DnsServer, dns_server, silent_server
from tests.support.mail_dkim import perl_arc_verify

from mailwarden.lib import arc, authres, dns
from mailwarden.policy.context import Message, memory_body
from mailwarden.policy.headers import Headers

HEADER = (
    b"DKIM-Signature: v=1; a=rsa-sha256; d=origin.test; s=x; h=from; bh=AAAA; b=AAAA\r\n"
    b"From: Alice <alice@origin.test>\r\n"
    b"To: list@lists.test\r\n"
    b"Subject: minutes of the meeting\r\n"
    b"Date: Wed, 02 Dec 2026 07:00:00 +0000\r\n"
    b"Message-ID: <1@origin.test>\r\n"
)
BODY = b"Hello all,\r\n\r\nthe minutes are below.\r\n"


@dataclass(frozen=True)
class Sealers:
    first: bytes  # RSA PEM of s=arc at first.test
    second: bytes  # RSA PEM of s=arc at second.test
    server: DnsServer


def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _record(key: rsa.RSAPrivateKey) -> str:
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    p = base64.b64encode(der).decode()
    chunks = " ".join(f'"{p[i : i + 200]}"' for i in range(0, len(p), 200))
    return f'"v=DKIM1; k=rsa; p=" {chunks}'


def _pem(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.fixture(scope="module")
def sealers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sealers]:
    first, second = _rsa(), _rsa()
    zones = {
        "first.test": f"arc._domainkey IN TXT {_record(first)}\n",
        "second.test": f"arc._domainkey IN TXT {_record(second)}\n",
    }
    with dns_server(tmp_path_factory.mktemp("nsd-arc"), zones) as server:
        yield Sealers(_pem(first), _pem(second), server)


@pytest.fixture
def configured(sealers: Sealers) -> Iterator[Sealers]:
    dns.configure([sealers.server.address], timeout=3.0)
    yield sealers
    dns.configure()


def message(header: bytes = HEADER, body: bytes = BODY) -> Message:
    return Message(Headers.parse(header), len(body), memory_body(body))


async def hop(
    msg: Message, authserv_id: str, domain: str, key: bytes, selector: str = "arc"
) -> list[str]:
    """What a receiving ADMD does: validate the chain, write Authentication-Results, seal."""
    chain = await arc.verify(msg)
    value = authres.add(msg, authserv_id, dkim=[], arc=chain)
    return await arc.seal(msg, domain=domain, selector=selector, key=key, authres=value)


async def test_first_seal_passes_both_verifiers(configured: Sealers) -> None:
    msg = message()
    fields = await hop(msg, "mx.first.test", "first.test", configured.first)
    names = [name for name, _ in msg.headers][:4]
    assert names == [
        "ARC-Seal",
        "ARC-Message-Signature",
        "ARC-Authentication-Results",
        "Authentication-Results",
    ]
    assert fields[0].startswith("ARC-Seal: i=1; cv=none; a=rsa-sha256; d=first.test; s=arc;")
    aar = msg.headers.get("ARC-Authentication-Results")
    assert aar == "i=1; mx.first.test; dkim=none; arc=none"
    ams = msg.headers.get("ARC-Message-Signature") or ""
    assert "dkim-signature" in ams and "from" in ams  # the AMS covers the DKIM signature
    result = await arc.verify(msg)
    assert result.result == "pass" and result.instances == 1 and result
    [only] = result.sets
    assert (only.instance, only.cv, only.seal_domain, only.signature_valid) == (
        1,
        "none",
        "first.test",
        True,
    )
    assert perl_arc_verify(await msg.raw(), configured.server)[0] == "pass"


async def test_two_hops_chain_with_cv_pass(configured: Sealers) -> None:
    msg = message()
    await hop(msg, "mx.first.test", "first.test", configured.first)
    fields = await hop(msg, "mx.second.test", "second.test", configured.second)
    assert "i=2; cv=pass" in fields[0] and "d=second.test" in fields[0]
    assert msg.headers.get("ARC-Authentication-Results") == (
        "i=2; mx.second.test; dkim=none; arc=pass"  # dkimpy's copy drops comments
    )
    result = await arc.verify(msg)
    assert (result.result, result.instances) == ("pass", 2)
    assert [(s.instance, s.cv, s.seal_domain) for s in result.sets] == [
        (1, "none", "first.test"),
        (2, "pass", "second.test"),
    ]
    verdict, detail = perl_arc_verify(await msg.raw(), configured.server)
    assert verdict == "pass", detail


async def test_body_changed_after_sealing_fails(configured: Sealers) -> None:
    msg = message()
    await hop(msg, "mx.first.test", "first.test", configured.first)
    raw = (await msg.raw()).replace(b"minutes are below", b"minutes are gone")
    result = await arc.verify(raw)
    assert result.result == "fail" and not result
    assert "ARC-Message-Signature did not validate" in result.reason
    assert not result.temporary
    assert perl_arc_verify(raw, configured.server)[0] == "fail"


async def test_edited_seal_fails(configured: Sealers) -> None:
    msg = message()
    await hop(msg, "mx.first.test", "first.test", configured.first)
    await hop(msg, "mx.second.test", "second.test", configured.second)
    # The first hop's AAR rewritten (say, to claim a DKIM pass): its seal no longer verifies.
    raw = (await msg.raw()).replace(
        b"i=1; mx.first.test;\r\n dkim=none", b"i=1; mx.first.test;\r\n dkim=pass"
    )
    assert b"dkim=pass" in raw
    result = await arc.verify(raw)
    assert result.result == "fail" and "ARC-Seal[" in result.reason
    assert perl_arc_verify(raw, configured.server)[0] == "fail"


async def test_a_seal_reporting_fail_ends_the_chain(configured: Sealers) -> None:
    msg = message()
    await hop(msg, "mx.first.test", "first.test", configured.first)
    broken = message(*_split((await msg.raw()).replace(b"minutes are below", b"minutes changed")))
    chain = await arc.verify(broken)
    assert chain.result == "fail"
    value = authres.add(broken, "mx.second.test", arc=chain)
    fields = await arc.seal(
        broken, domain="second.test", selector="arc", key=configured.second, authres=value
    )
    assert "i=2; cv=fail" in fields[0]
    result = await arc.verify(broken)
    assert result.result == "fail" and result.instances == 2
    assert perl_arc_verify(await broken.raw(), configured.server)[0] == "fail"


def _split(raw: bytes) -> tuple[bytes, bytes]:
    header, _, body = raw.partition(b"\r\n\r\n")
    return header + b"\r\n", body


async def test_forged_authentication_results_of_our_id_are_not_sealed(configured: Sealers) -> None:
    forged = b"Authentication-Results: mx.first.test; dkim=pass header.d=bank.test\r\n"
    msg = message(forged + HEADER)
    value = authres.build("mx.first.test", dkim=[], arc=await arc.verify(msg))
    await arc.seal(msg, domain="first.test", selector="arc", key=configured.first, authres=value)
    assert (
        msg.headers.get("ARC-Authentication-Results") == "i=1; mx.first.test; dkim=none; arc=none"
    )


async def test_unsealed_message_is_none(configured: Sealers) -> None:
    result = await arc.verify(message())
    assert result == arc.ArcResult("none") and not result


async def test_unpublished_key_fails_permanently(configured: Sealers) -> None:
    msg = message()
    await hop(msg, "mx.first.test", "first.test", configured.first, selector="gone")
    result = await arc.verify(msg)
    assert result.result == "fail" and not result.temporary
    # Mail::DKIM calls a chain whose key is not published "invalid" (it cannot be checked).
    assert perl_arc_verify(await msg.raw(), configured.server)[0] == "invalid"


async def test_silent_dns_server_is_a_temporary_fail(sealers: Sealers) -> None:
    msg = message()
    dns.configure([sealers.server.address], timeout=3.0)
    try:
        await hop(msg, "mx.first.test", "first.test", sealers.first)
        with silent_server() as address:
            dns.configure([address], timeout=0.5)
            result = await arc.verify(msg)
    finally:
        dns.configure()
    assert result.result == "fail" and result.temporary
    assert "no answer within 0.5s" in result.reason


async def test_sealing_refuses_what_would_make_a_broken_chain(configured: Sealers) -> None:
    msg = message()
    await hop(msg, "mx.first.test", "first.test", configured.first)
    with pytest.raises(ValueError, match="must report their validation"):
        await arc.seal(
            msg,
            domain="second.test",
            selector="arc",
            key=configured.second,
            authres="mx.second.test; dkim=none",
        )
    with pytest.raises(ValueError, match="RSA keys only"):
        await arc.seal(
            message(),
            domain="first.test",
            selector="arc",
            key=_pem(ed25519.Ed25519PrivateKey.generate()),
            authres="mx.first.test; none",
        )
    with pytest.raises(ValueError, match="no ARC set"):
        await arc.seal(
            message(),
            domain="first.test",
            selector="arc",
            key=configured.first,
            authres="mx.first.test; arc=pass",
        )
    with pytest.raises(ValueError, match="not an Authentication-Results value"):
        await arc.seal(
            message(), domain="first.test", selector="arc", key=configured.first, authres="x; ="
        )


TAIL = b" a=rsa-sha256; d=first.test; s=arc; bh=AAAA; b=AAAA;"
MALFORMED = [
    # dkimpy cannot find an AMS written "i=1 ;" again (it looks for " i=1;"): still a fail.
    b"ARC-Message-Signature: i=1 ;" + TAIL + b" h=from\r\n",
    b"ARC-Message-Signature:i=1;" + TAIL + b" h=from\r\n",
    b"ARC-Message-Signature: i=1;" + TAIL + b" h=arc-seal\r\n",
]
SEAL = b"ARC-Seal: i=1; cv=none; a=rsa-sha256; d=first.test; s=arc; b=AAAA\r\n"
AAR = b"ARC-Authentication-Results: i=1; mx.first.test; none\r\n"


@pytest.mark.parametrize("ams", MALFORMED)
async def test_malformed_sets_fail_without_raising(configured: Sealers, ams: bytes) -> None:
    result = await arc.verify(SEAL + ams + AAR + HEADER + b"\r\n" + BODY)
    assert (result.result, result.instances, result.temporary) == ("fail", 1, False)
    assert result.reason


async def test_arc_fields_without_an_instance_are_a_fail_not_none(configured: Sealers) -> None:
    result = await arc.verify(b"ARC-Seal: i=abc; cv=none\r\n" + HEADER + b"\r\n" + BODY)
    assert result.result == "fail" and "without a valid i=" in result.reason
    result = await arc.verify(b"ARC-Seal: i=51; cv=pass\r\n" + HEADER + b"\r\n" + BODY)
    assert result.result == "fail" and "i=51 is over 50" in result.reason


async def test_impossible_key_name_is_not_a_dns_failure(configured: Sealers) -> None:
    seal = b"ARC-Seal: i=1; cv=none; a=rsa-sha256; d=" + b"x" * 70 + b".test; s=arc; b=AAAA\r\n"
    msg = message()
    await hop(msg, "mx.first.test", "first.test", configured.first)
    raw = (await msg.raw()).split(b"\r\n", 1)
    assert raw[0].startswith(b"ARC-Seal:")
    folded_end = raw[1].index(b"ARC-Message-Signature:")
    result = await arc.verify(seal + raw[1][folded_end:])
    assert result.result == "fail" and not result.temporary


FIELDS = st.sampled_from(["ARC-Seal", "ARC-Message-Signature", "ARC-Authentication-Results"])
TAGS = st.sampled_from(["i=1", "i=2", "cv=none", "cv=pass", "a=rsa-sha256", "d=first.test"])
NOISE = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.tuples(FIELDS, st.lists(st.one_of(TAGS, NOISE), max_size=6)), max_size=4))
def test_verify_never_raises_on_arc_like_fields(
    sealers: Sealers, fields: list[tuple[str, list[str]]]
) -> None:
    head = b"".join(f"{name}: {'; '.join(tags)}\r\n".encode() for name, tags in fields)
    dns.configure([sealers.server.address], timeout=1.0)
    try:
        result = asyncio.run(arc.verify(head + HEADER + b"\r\n" + BODY))
    finally:
        dns.configure()
    assert result.result in ("none", "fail")
    assert (result.result == "none") == (not fields)
