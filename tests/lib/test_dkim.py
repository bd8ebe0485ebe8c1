"""DKIM signing and verification against nsd on loopback publishing the public keys; every
signature is also checked by dkimpy's own verifier on the raw bytes (an independent path: its
own DNS lookup, straight to nsd)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dkim as dkimpy
import dns.resolver as dnsresolver
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from tests.support.dns_server import DnsServer, dns_server, silent_server

from mailwarden.lib import dkim, dns
from mailwarden.policy.context import Message, memory_body
from mailwarden.policy.headers import Headers

HEADER = (
    b"From: Alice <alice@sign.test>\r\n"
    b"To: bob@example.org\r\n"
    b"Subject: quarterly figures\r\n"
    b"Date: Wed, 02 Dec 2026 07:00:00 +0000\r\n"
    b"Message-ID: <1@sign.test>\r\n"
)
BODY = b"Hello Bob,\r\n\r\nthe figures are attached.\r\n"


@dataclass(frozen=True)
class Keys:
    rsa_pem: bytes
    ed_pem: bytes
    server: DnsServer


def _public_record(private: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> str:
    if isinstance(private, rsa.RSAPrivateKey):
        der = private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        p = base64.b64encode(der).decode()
        chunks = " ".join(f'"{p[i : i + 200]}"' for i in range(0, len(p), 200))
        return f'"v=DKIM1; k=rsa; p=" {chunks}'
    raw = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return f'"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}"'


def _pem(private: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keys]:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ed_key = ed25519.Ed25519PrivateKey.generate()
    zone = (
        f"rsa._domainkey IN TXT {_public_record(rsa_key)}\n"
        f"ed._domainkey IN TXT {_public_record(ed_key)}\n"
        'broken._domainkey IN TXT "v=DKIM1; k=rsa; p=notbase64!!"\n'
    )
    with dns_server(tmp_path_factory.mktemp("nsd-dkim"), {"sign.test": zone}) as server:
        yield Keys(_pem(rsa_key), _pem(ed_key), server)


@pytest.fixture
def configured(keys: Keys) -> Iterator[Keys]:
    dns.configure([keys.server.address], timeout=3.0)
    yield keys
    dns.configure()


def message(header: bytes = HEADER, body: bytes = BODY) -> Message:
    return Message(Headers.parse(header), len(body), memory_body(body))


def dkimpy_verifies(raw: bytes, server: DnsServer) -> bool:
    """dkimpy's own verify, its DNS lookup sent straight to nsd."""
    resolver = dnsresolver.Resolver(configure=False)
    resolver.nameservers = [server.host]
    resolver.port = server.port

    def txt(name: bytes, timeout: float = 5) -> bytes | None:
        try:
            answer = resolver.resolve(name.decode(), "TXT", lifetime=timeout)
        except dnsresolver.NXDOMAIN:
            return None
        return b"".join(answer[0].strings)

    return bool(dkimpy.verify(raw, dnsfunc=txt))


@pytest.mark.parametrize(
    ("selector", "algorithm"), [("rsa", "rsa-sha256"), ("ed", "ed25519-sha256")]
)
@pytest.mark.parametrize("canon", ["relaxed/relaxed", "simple/simple"])
async def test_signed_message_verifies(
    configured: Keys, selector: str, algorithm: str, canon: str
) -> None:
    pem = configured.rsa_pem if selector == "rsa" else configured.ed_pem
    msg = message()
    field = await dkim.sign(
        msg, domain="sign.test", selector=selector, key=pem, canonicalization=canon
    )
    assert msg.headers.to_bytes().startswith(b"DKIM-Signature: ")
    assert f"a={algorithm}" in field and f"c={canon}" in field
    results = await dkim.verify(msg)
    assert results == [dkim.DkimResult("pass", "sign.test", selector, algorithm)]
    assert dkimpy_verifies(await msg.raw(), configured.server)


async def test_key_from_a_file_path_and_str(configured: Keys, tmp_path: Path) -> None:
    path = tmp_path / "rsa.pem"
    path.write_bytes(configured.rsa_pem)
    for key in (path, str(path), configured.rsa_pem.decode()):
        msg = message()
        await dkim.sign(msg, domain="sign.test", selector="rsa", key=key)
        assert [r.result for r in await dkim.verify(msg)] == ["pass"]


async def test_tampered_body_fails(configured: Keys) -> None:
    msg = message()
    await dkim.sign(msg, domain="sign.test", selector="rsa", key=configured.rsa_pem)
    raw = (await msg.raw()).replace(b"attached", b"deleted")
    [result] = await dkim.verify(raw)
    assert result.result == "fail" and "body hash" in result.reason
    assert not dkimpy_verifies(raw, configured.server)


async def test_tampered_signed_header_fails(configured: Keys) -> None:
    msg = message()
    await dkim.sign(msg, domain="sign.test", selector="ed", key=configured.ed_pem)
    raw = (await msg.raw()).replace(b"quarterly figures", b"send money")
    assert [r.result for r in await dkim.verify(raw)] == ["fail"]
    assert not dkimpy_verifies(raw, configured.server)


async def test_added_from_fails_when_oversigned(configured: Keys) -> None:
    msg = message()
    field = await dkim.sign(msg, domain="sign.test", selector="rsa", key=configured.rsa_pem)
    assert "from : " in field.lower().replace("\r\n", "").replace("\t", "")
    msg.headers.add("From", "Mallory <ceo@sign.test>", at_top=True)
    assert [r.result for r in await dkim.verify(msg)] == ["fail"]
    assert not dkimpy_verifies(await msg.raw(), configured.server)


async def test_oversigning_is_what_stops_an_added_subject(configured: Keys) -> None:
    # Without oversigning, a second Subject above the signed one is not covered (RFC 6376
    # §5.4.2: instances are signed from the bottom); with it, the signature breaks.
    for oversign, expected in (((), "pass"), (("Subject",), "fail")):
        msg = message()
        await dkim.sign(
            msg, domain="sign.test", selector="rsa", key=configured.rsa_pem, oversign=oversign
        )
        msg.headers.add("Subject", "URGENT: wire transfer", at_top=True)
        assert [r.result for r in await dkim.verify(msg)] == [expected]


async def test_missing_key_is_permerror(configured: Keys) -> None:
    msg = message()
    await dkim.sign(msg, domain="sign.test", selector="gone", key=configured.rsa_pem)
    [result] = await dkim.verify(msg)
    assert result.result == "permerror"
    assert "no key published at gone._domainkey.sign.test" in result.reason


async def test_unusable_key_record_is_permerror(configured: Keys) -> None:
    msg = message()
    await dkim.sign(msg, domain="sign.test", selector="broken", key=configured.rsa_pem)
    assert [r.result for r in await dkim.verify(msg)] == ["permerror"]


async def test_silent_dns_server_is_temperror(keys: Keys) -> None:
    msg = message()
    await dkim.sign(msg, domain="sign.test", selector="rsa", key=keys.rsa_pem)
    with silent_server() as address:
        dns.configure([address], timeout=0.5)
        try:
            [result] = await dkim.verify(msg)
        finally:
            dns.configure()
    assert result.result == "temperror" and "no answer within 0.5s" in result.reason


async def test_expired_signature_fails(configured: Keys) -> None:
    msg = message()
    field = await dkim.sign(
        msg, domain="sign.test", selector="ed", key=configured.ed_pem, expiration=1
    )
    assert " x=" in field or ";x=" in field.replace(" ", "")
    assert [r.result for r in await dkim.verify(msg)] == ["pass"]
    await asyncio.sleep(2.1)
    [result] = await dkim.verify(msg)
    assert result.result == "fail" and "expired" in result.reason


async def test_two_signatures_give_two_results(configured: Keys) -> None:
    msg = message()
    await dkim.sign(msg, domain="sign.test", selector="rsa", key=configured.rsa_pem)
    await dkim.sign(msg, domain="sign.test", selector="ed", key=configured.ed_pem)
    results = await dkim.verify(msg)
    assert [(r.selector, r.result) for r in results] == [("ed", "pass"), ("rsa", "pass")]


async def test_unsigned_message_has_no_results(configured: Keys) -> None:
    assert await dkim.verify(message()) == []


async def test_bad_options_are_refused(configured: Keys) -> None:
    with pytest.raises(ValueError, match="canonicalization"):
        await dkim.sign(
            message(),
            domain="sign.test",
            selector="rsa",
            key=configured.rsa_pem,
            canonicalization="loose",
        )
    with pytest.raises(ValueError, match="no From field"):
        await dkim.sign(
            message(HEADER.replace(b"From:", b"X-From:")),
            domain="sign.test",
            selector="rsa",
            key=configured.rsa_pem,
        )
    with pytest.raises(ValueError, match="PEM private key"):
        await dkim.sign(message(), domain="sign.test", selector="rsa", key=b"-----BEGIN junk")


async def test_unparseable_header_section_is_permerror_not_an_exception(configured: Keys) -> None:
    msg = message()
    await dkim.sign(msg, domain="sign.test", selector="rsa", key=configured.rsa_pem)
    raw = await msg.raw()
    broken = raw.replace(b"To: ", b"no colon on this line\r\nTo: ", 1)
    [result] = await dkim.verify(broken)
    assert result.result == "permerror" and "not parseable" in result.reason
    assert await dkim.verify(HEADER + b"no colon here\r\n\r\n" + BODY) == []
