"""DANE (RFC 7672) against a DNSSEC-signed zone on loopback: nsd serves dane.test signed by
ldns-signzone, unbound validates it with the zone's trust anchor, and delivery resolves
through unbound. The receiving MX is a real ``mailwarden run`` node with a trustme
certificate issued by an intermediate CA (sent with its chain), trusted by no CA store."""

from __future__ import annotations

import datetime
import hashlib
import json
import ssl
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.rdata as dns_rdata
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given
from hypothesis import strategies as st
from tests.queue.delivery_support import (
    FAST_RETRIES,
    node_config,
    queued,
    send,
    sending_node,
    wait_until,
)
from tests.support.dnssec import Resolver, validating_resolver
from tests.support.node import free_port, node_process, running_node, write_config

from mailwarden.config import ConfigError, load_config
from mailwarden.delivery import dane, dane_openssl
from mailwarden.delivery.connection import ConnectOptions, OutboundConnection, open_first
from mailwarden.delivery.dane_openssl import UnsupportedError, dane_context
from mailwarden.delivery.errors import DeliveryError
from mailwarden.delivery.mx import resolve_targets
from mailwarden.delivery.tls import TlsMode, TlsPolicy
from mailwarden.delivery.tls_selection import TlsPolicySelector
from mailwarden.lib import dns
from mailwarden.lib.dns import TlsaRecord
from mailwarden.smtp.client import Envelope
from mailwarden.spool.reader import iter_messages
from mailwarden.spool.records import SpooledRecipient

MX_NAMES = ["mx-ee", "mx-ta", "mx-mismatch", "mx-bogus", "mx-pkix", "mx-tawrong", "mx-expired"]


@dataclass
class Setup:
    port: int  # where the receiving node listens (the TLSA records are _PORT._tcp)
    resolver: Resolver
    chain_pem: bytes
    key_pem: bytes
    expired_pem: bytes  # a certificate (and key) that expired yesterday, its TLSA is 3 1 1


def _spki_sha256(certificate: x509.Certificate) -> str:
    key = certificate.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(key).hexdigest()


def _records(
    port: int, leaf: x509.Certificate, intermediate: x509.Certificate, expired: x509.Certificate
) -> str:
    spki = _spki_sha256(leaf)
    ta = hashlib.sha256(intermediate.public_bytes(Encoding.DER))
    tlsa = {
        "mx-ee": f"3 1 1 {spki}",  # DANE-EE, SPKI, SHA-256
        "mx-ta": f"2 0 1 {ta.hexdigest()}",  # DANE-TA: the intermediate, full cert, SHA-256
        "mx-mismatch": f"3 1 1 {'00' * 32}",
        "mx-bogus": f"3 1 1 {spki}",  # right data, broken signature
        "mx-pkix": f"1 1 1 {spki}",  # PKIX-EE: unusable (RFC 7672 §3.1.3)
        "mx-tawrong": f"2 0 1 {ta.hexdigest()}",  # the certificate does not name this host
        "mx-expired": f"3 1 1 {_spki_sha256(expired)}",
    }
    lines = []
    for name in MX_NAMES:
        domain = name.removeprefix("mx-")
        lines += [
            f"{domain} IN MX 10 {name}.dane.test.",
            f"{name} IN A 127.0.0.1",
            f"_{port}._tcp.{name} IN TLSA {tlsa[name]}",
        ]
    # An MX host that is a CNAME: the TLSA base domain is the expanded name (RFC 7672 §2.2.3).
    lines += [
        "cname IN MX 10 alias.dane.test.",
        "alias IN CNAME mx-real.dane.test.",
        "mx-real IN A 127.0.0.1",
        f"_{port}._tcp.mx-real IN TLSA 3 1 1 {spki}",
        # One malformed record (a SHA-256 of two bytes) beside a good one: only unusable.
        "malformed IN MX 10 mx-malformed.dane.test.",
        "mx-malformed IN A 127.0.0.1",
        f"_{port}._tcp.mx-malformed IN TLSA 3 1 1 abcd",
        f"_{port}._tcp.mx-malformed IN TLSA 3 1 1 {spki}",
        # No MX records: the domain is its own MX (RFC 7672 §2.2.2, the denial is signed).
        "implicit IN A 127.0.0.1",
        f"_{port}._tcp.implicit IN TLSA 3 1 1 {spki}",
    ]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    directory = tmp_path_factory.mktemp("dane")
    root = trustme.CA()
    intermediate = root.create_child_ca()
    names = [f"{n}.dane.test" for n in MX_NAMES if n != "mx-tawrong"]
    cert = intermediate.issue_cert(*names, "mx.plain.test")
    yesterday = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
    expired = intermediate.issue_cert(
        "mx-expired.dane.test",
        not_before=yesterday - datetime.timedelta(days=30),
        not_after=yesterday,
    )
    expired_leaf = x509.load_pem_x509_certificate(expired.cert_chain_pems[0].bytes())
    chain = b"".join(blob.bytes() for blob in cert.cert_chain_pems)
    leaf = x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes())
    inter = x509.load_pem_x509_certificate(intermediate.cert_pem.bytes())
    port = free_port()
    plain = textwrap.dedent(
        f"""\
        @ IN MX 10 mx.plain.test.
        mx IN A 127.0.0.1
        _{port}._tcp.mx IN TLSA 3 1 1 {"00" * 32}
        """
    )
    with validating_resolver(
        directory,
        signed={"dane.test": _records(port, leaf, inter, expired_leaf)},
        unsigned={"plain.test": plain},
        corrupt=(f"_{port}._tcp.mx-bogus.dane.test",),
    ) as resolver:
        expired_pem = expired.private_key_and_cert_chain_pem.bytes()
        yield Setup(port, resolver, chain, cert.private_key_pem.bytes(), expired_pem)


@pytest.fixture
def through_unbound(setup: Setup) -> Iterator[Setup]:
    dns.configure([setup.resolver.address], timeout=5.0)
    dane.clear_cache()
    yield setup
    dns.configure()
    dane.clear_cache()


def _server_keys(directory: Path, setup: Setup, *, expired: bool = False) -> str:
    if expired:
        (directory / "cert.pem").write_bytes(setup.expired_pem)
        (directory / "key.pem").write_bytes(setup.expired_pem)
    else:
        (directory / "cert.pem").write_bytes(setup.chain_pem)
        (directory / "key.pem").write_bytes(setup.key_pem)
    return 'tls_certificate = "cert.pem"\ntls_key = "key.pem"\n'


async def _open(domain: str, setup: Setup) -> OutboundConnection:
    targets = await resolve_targets(domain, port=setup.port)
    base = TlsPolicy(TlsMode.OPTIONAL)
    policies = await TlsPolicySelector().select(domain, targets, base)
    options = ConnectOptions("out.test.example", tls=base)
    connection, _ = await open_first(targets, options, policies=policies)
    return connection


async def test_dane_ee_match_delivers_verified_under_the_tlsa_policy(
    tmp_path: Path, through_unbound: Setup
) -> None:
    setup = through_unbound
    with running_node(tmp_path, server=_server_keys(tmp_path, setup), port=setup.port) as node:
        conn = await _open("ee.dane.test", setup)
        done = await conn.send(
            Envelope("s@example.com", ["r@example.org"]), b"Subject: d\r\n\r\nx\r\n"
        )
        await conn.close()
        assert done.delivered == ("r@example.org",)
        assert len(list(iter_messages(node.spool))) == 1
    assert conn.tls.protocol and conn.tls.verified and conn.tls.failure is None
    policy = conn.tls.policy
    assert (policy.source, policy.policy_type, policy.policy_domain) == (
        "dane",
        "tlsa",
        "ee.dane.test",
    )
    assert policy.policy_strings[0].startswith("3 1 1 ")


async def test_dane_ta_with_intermediate_verifies_the_chain_and_name(
    tmp_path: Path, through_unbound: Setup
) -> None:
    setup = through_unbound
    with running_node(tmp_path, server=_server_keys(tmp_path, setup), port=setup.port):
        conn = await _open("ta.dane.test", setup)
        await conn.close()
    assert conn.tls.verified and conn.tls.policy.tlsa[0][:3] == (2, 0, 1)


async def test_tlsa_mismatch_is_a_temporary_tlsa_invalid_failure(
    tmp_path: Path, through_unbound: Setup
) -> None:
    setup = through_unbound
    keys = _server_keys(tmp_path, setup)
    with (
        running_node(tmp_path, server=keys, port=setup.port),
        pytest.raises(DeliveryError) as caught,
    ):
        await _open("mismatch.dane.test", setup)
    error = caught.value
    assert error.reply.temporary and error.reply.enhanced == "4.7.5"
    assert error.tls_failure == "tlsa-invalid" and error.stage == "tls"


async def test_bogus_tlsa_signature_defers_without_connecting(
    tmp_path: Path, through_unbound: Setup
) -> None:
    setup = through_unbound
    keys = _server_keys(tmp_path, setup)
    with (
        running_node(tmp_path, server=keys, port=setup.port),
        pytest.raises(DeliveryError) as caught,
    ):
        await _open("bogus.dane.test", setup)
    error = caught.value
    assert error.reply.temporary and error.tls_failure == "dnssec-invalid"
    assert "TLSA lookup of mx-bogus.dane.test failed" in error.reply.text


async def test_only_unusable_pkix_records_mean_tls_without_authentication(
    tmp_path: Path, through_unbound: Setup
) -> None:
    setup = through_unbound
    with running_node(tmp_path, server=_server_keys(tmp_path, setup), port=setup.port):
        conn = await _open("pkix.dane.test", setup)
        await conn.close()
    policy = conn.tls.policy
    assert conn.tls.protocol and not conn.tls.verified
    assert policy.source == "dane" and policy.mode is TlsMode.REQUIRED and not policy.tlsa


async def test_insecure_zone_falls_back_to_opportunistic_tls(
    tmp_path: Path, through_unbound: Setup
) -> None:
    setup = through_unbound
    with running_node(tmp_path, server=_server_keys(tmp_path, setup), port=setup.port):
        conn = await _open("plain.test", setup)  # its (wrong) TLSA record is not trusted
        await conn.close()
    assert conn.tls.protocol and not conn.tls.verified
    assert (conn.tls.policy.source, conn.tls.policy.policy_type) == ("config", "no-policy-found")


async def test_dane_off_ignores_the_records(tmp_path: Path, through_unbound: Setup) -> None:
    setup = through_unbound
    dane.configure("off")
    try:
        with running_node(tmp_path, server=_server_keys(tmp_path, setup), port=setup.port):
            conn = await _open("mismatch.dane.test", setup)
            await conn.close()
    finally:
        dane.configure("opportunistic")
    assert conn.tls.policy.source == "config"


def test_usable_records_are_dane_ta_and_ee_with_known_parameters() -> None:
    digest = b"\1" * 32
    assert dane.usable(TlsaRecord(3, 1, 1, digest)) and dane.usable(TlsaRecord(2, 0, 2, b"\1" * 64))
    assert dane.usable(TlsaRecord(3, 0, 0, b"any certificate bytes"))
    assert not dane.usable(TlsaRecord(1, 1, 1, digest))  # PKIX-EE
    assert not dane.usable(TlsaRecord(0, 1, 1, digest))  # PKIX-TA
    assert not dane.usable(TlsaRecord(3, 2, 1, digest))  # unknown selector
    assert not dane.usable(TlsaRecord(3, 1, 3, digest))  # unknown matching type
    assert not dane.usable(TlsaRecord(3, 1, 1, b"\1" * 31))  # a SHA-256 of the wrong size


RESULTS_SCRIPT = """
import json
from pathlib import Path

OUT = Path(__file__).with_name("results.jsonl")

async def post_delivery(attempt, result):
    with OUT.open("a") as out:
        out.write(json.dumps({
            "domain": attempt.domain,
            "verified": result.tls_verified,
            "policy": result.tls_policy,
            "source": result.tls_policy_source,
            "protocol": result.tls_protocol,
        }) + "\\n")
"""


def test_a_tlsa_mismatch_defers_the_message_in_a_whole_node(tmp_path: Path, setup: Setup) -> None:
    peer_dir = tmp_path / "peer"
    peer_dir.mkdir()
    config = write_config(peer_dir, setup.port, server=_server_keys(peer_dir, setup))
    config.write_text(
        config.read_text().replace(
            'local_domains = ["example.org"]',
            'local_domains = ["ee.dane.test", "mismatch.dane.test"]',
        )
    )
    out = tmp_path / "out"
    out.mkdir()
    (out / "delivery.py").write_text(RESULTS_SCRIPT)
    port = free_port()
    (out / "mailwarden.toml").write_text(
        node_config(
            port,
            server='script = "delivery.py"\n',
            body=f"\n[delivery]\nport = {setup.port}\n" + FAST_RETRIES,
            node_extra=f'dns_servers = ["{setup.resolver.address}"]',
        )
    )
    with (
        node_process(peer_dir, config, setup.port) as peer,
        node_process(out, out / "mailwarden.toml", port) as node,
    ):
        send(node.port, "alice@sender.example", ["bob@ee.dane.test"], "dane ok")
        send(node.port, "alice@sender.example", ["carol@mismatch.dane.test"], "dane mismatch")
        wait_until(lambda: len(list(iter_messages(peer.spool))) == 1, what="the DANE-EE message")

        def deferred() -> list[SpooledRecipient]:
            return [r for m in queued(node) for r in m.recipients if r.state == "deferred"]

        (carol,) = wait_until(deferred, what="the mismatched recipient deferred")  # type: ignore[misc]
        arrived = list(iter_messages(peer.spool))
        results = out / "results.jsonl"
        wait_until(lambda: results.exists() and "ee.dane.test" in results.read_text())
        seen = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r.recipients[0].address for r in arrived] == ["bob@ee.dane.test"]
    assert carol.address == "carol@mismatch.dane.test"
    assert "4.7.5" in carol.last_reply and "tlsa-invalid" in carol.last_reply
    ok = next(r for r in seen if r["domain"] == "ee.dane.test")
    assert ok["verified"] and ok["source"] == "dane" and ok["policy"] == "required"
    assert ok["protocol"] in ("TLSv1.2", "TLSv1.3")


def test_dane_off_in_the_config_delivers_despite_a_mismatch(tmp_path: Path, setup: Setup) -> None:
    peer_dir = tmp_path / "peer"
    peer_dir.mkdir()
    config = write_config(peer_dir, setup.port, server=_server_keys(peer_dir, setup))
    config.write_text(
        config.read_text().replace(
            'local_domains = ["example.org"]', 'local_domains = ["mismatch.dane.test"]'
        )
    )
    body = f'\n[delivery]\nport = {setup.port}\ndane = "off"\n' + FAST_RETRIES
    with (
        node_process(peer_dir, config, setup.port) as peer,
        sending_node(
            tmp_path / "out", body=body, node_extra=f'dns_servers = ["{setup.resolver.address}"]'
        ) as node,
    ):
        send(node.port, "alice@sender.example", ["carol@mismatch.dane.test"], "off")
        wait_until(lambda: len(list(iter_messages(peer.spool))) == 1, what="delivery without DANE")


def test_the_dane_key_takes_its_two_values_and_names_a_bad_one(tmp_path: Path) -> None:
    assert load_config(None).delivery.dane == "opportunistic"
    path = tmp_path / "mailwarden.toml"
    path.write_text('[delivery]\ndane = "off"\n')
    assert load_config(path).delivery.dane == "off"
    path.write_text('[delivery]\ndane = "mandatory"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert any("delivery.dane" in problem for problem in caught.value.problems)


async def test_dane_ta_checks_the_names_of_the_certificate(
    tmp_path: Path, through_unbound: Setup
) -> None:
    setup = through_unbound
    keys = _server_keys(tmp_path, setup)  # the certificate does not name mx-tawrong.dane.test
    with (
        running_node(tmp_path, server=keys, port=setup.port),
        pytest.raises(DeliveryError) as caught,
    ):
        await _open("tawrong.dane.test", setup)
    assert caught.value.tls_failure == "tlsa-invalid" and caught.value.reply.temporary


async def test_dane_ee_checks_neither_name_nor_expiry(
    tmp_path: Path, through_unbound: Setup
) -> None:
    setup = through_unbound
    keys = _server_keys(tmp_path, setup, expired=True)
    with running_node(tmp_path, server=keys, port=setup.port):
        conn = await _open("expired.dane.test", setup)
        await conn.close()
    assert conn.tls.verified and conn.tls.policy.source == "dane"


async def test_a_cname_mx_host_uses_the_tlsa_records_of_the_expanded_name(
    tmp_path: Path, through_unbound: Setup
) -> None:
    setup = through_unbound
    (target,) = await resolve_targets("cname.dane.test", port=setup.port)
    assert target.host == "alias.dane.test" and target.dnssec
    assert target.expanded == "mx-real.dane.test"
    with running_node(tmp_path, server=_server_keys(tmp_path, setup), port=setup.port):
        conn = await _open("cname.dane.test", setup)
        await conn.close()
    assert conn.tls.verified
    assert conn.tls.policy.dane_names == ("mx-real.dane.test", "alias.dane.test")


async def test_targets_say_whether_their_dns_was_authenticated(through_unbound: Setup) -> None:
    (signed,) = await resolve_targets("ee.dane.test", port=25)
    (unsigned,) = await resolve_targets("plain.test", port=25)
    assert signed.dnssec and not unsigned.dnssec


async def test_an_implicit_mx_with_a_signed_denial_gets_dane(
    tmp_path: Path, through_unbound: Setup
) -> None:
    setup = through_unbound
    (target,) = await resolve_targets("implicit.dane.test", port=setup.port)
    assert target.host == "implicit.dane.test" and target.dnssec
    with running_node(tmp_path, server=_server_keys(tmp_path, setup), port=setup.port):
        conn = await _open("implicit.dane.test", setup)
        await conn.close()
    assert conn.tls.verified and conn.tls.policy.source == "dane"


@st.composite
def _tlsa(draw: st.DrawFn) -> TlsaRecord:
    mtype = draw(st.integers(0, 255))
    # dnspython (like RFC 6698 §2.1.3) insists a SHA-256/512 digest has its length.
    size = {1: 32, 2: 64}.get(mtype)
    data = draw(st.binary(min_size=size or 1, max_size=size or 80))
    return TlsaRecord(draw(st.integers(0, 255)), draw(st.integers(0, 255)), mtype, data)


@given(_tlsa())
def test_presentation_reads_back_as_the_same_record(record: TlsaRecord) -> None:
    parsed = dns_rdata.from_text("IN", "TLSA", dane.presentation(record))
    assert TlsaRecord(parsed.usage, parsed.selector, parsed.mtype, parsed.cert) == record
    usable = record.usage in (2, 3) and record.selector in (0, 1) and record.mtype in (0, 1, 2)
    assert dane.usable(record) is usable


def test_the_openssl_binding_refuses_an_ssl_object_of_another_context() -> None:
    ours = dane_context(["mx.example.test"], [(3, 1, 1, b"\1" * 32)])
    other = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    stranger = other.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname="mx.example.test")
    with pytest.raises(UnsupportedError):
        dane_openssl._ssl_pointer(stranger, ours)
    # Its own SSL objects get the records, before any handshake.
    mine = ours.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname="mx.example.test")
    assert dane_openssl._ssl_pointer(mine, ours)


async def test_a_malformed_tlsa_record_is_unusable_and_the_good_one_authenticates(
    tmp_path: Path, through_unbound: Setup
) -> None:
    setup = through_unbound
    with running_node(tmp_path, server=_server_keys(tmp_path, setup), port=setup.port):
        conn = await _open("malformed.dane.test", setup)
        await conn.close()
    assert conn.tls.verified and len(conn.tls.policy.policy_strings) == 2
    assert len(conn.tls.policy.tlsa) == 1  # the two-byte "digest" is not used
