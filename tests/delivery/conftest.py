"""Fixtures of the delivery tests: a real DNS server (nsd) on loopback serving the zones the MX
tests resolve, the node's resolver (``[node] dns_servers``) pointed at it, and trustme
certificates for a ``mailwarden run`` TLS peer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from tests.support.dns_server import DnsServer, dns_server

from mailwarden.lib import dns

# One name per MX case; the comments say what resolve_targets must make of it.
DELIVERY = """\
; preference order: 10, 20, 30 whatever the order of the records
order      IN MX 30 mx30.delivery.test.
order      IN MX 10 mx10.delivery.test.
order      IN MX 20 mx20.delivery.test.
mx10       IN A 192.0.2.10
mx20       IN A 192.0.2.20
mx30       IN A 192.0.2.30

; four hosts of equal preference (shuffled), then a backup
equal      IN MX 10 e1.delivery.test.
equal      IN MX 10 e2.delivery.test.
equal      IN MX 10 e3.delivery.test.
equal      IN MX 10 e4.delivery.test.
equal      IN MX 20 backup.delivery.test.
e1         IN A 192.0.2.41
e2         IN A 192.0.2.42
e3         IN A 192.0.2.43
e4         IN A 192.0.2.44
backup     IN A 192.0.2.49

; no MX: the domain's own addresses (RFC 5321 §5.1 implicit MX), IPv6 first
implicit   IN A 192.0.2.50
implicit   IN AAAA 2001:db8::50
; exists, but neither MX nor address
bare       IN TXT "no mail here"

; RFC 7505 null MX, alone and (wrongly) mixed with a real MX
nullmx     IN MX 0 .
mixednull  IN MX 0 .
mixednull  IN MX 10 mx10.delivery.test.

; MX target that is a CNAME
cname      IN MX 10 alias.delivery.test.
alias      IN CNAME real.delivery.test.
real       IN A 192.0.2.60

; MX hosts without an address: skipped while another has one
noaddr     IN MX 10 ghost.delivery.test.
noaddr     IN MX 20 bare.delivery.test.
noaddr     IN MX 30 mx30.delivery.test.
; ... and when none has one: permanent, or temporary if a lookup failed temporarily
allghosts  IN MX 10 ghost.delivery.test.
allghosts  IN MX 20 bare.delivery.test.
softghosts IN MX 10 ghost.delivery.test.
softghosts IN MX 20 mx.broken.test.
; a primary MX whose lookup fails temporarily, and a backup that resolves
softfirst  IN MX 10 mx.broken.test.
softfirst  IN MX 20 mx20.delivery.test.

; MX target written as an IP address
numeric    IN MX 10 192.0.2.70.

; dual-stack host: IPv6 addresses before IPv4 ones
dual       IN MX 10 ds.delivery.test.
dual       IN MX 20 mx20.delivery.test.
ds         IN A 192.0.2.80
ds         IN A 192.0.2.81
ds         IN AAAA 2001:db8::80
ds         IN AAAA 2001:db8::81

; the same address under two MX hosts: tried once, at the better preference
dup        IN MX 10 mx10.delivery.test.
dup        IN MX 20 mx10again.delivery.test.
mx10again  IN A 192.0.2.10

; next hops: "[relay]" is relay's own address, "relay" its MX
relay      IN A 192.0.2.90
relay      IN MX 10 relaymx.delivery.test.
relaymx    IN A 192.0.2.91
"""

ZONES = {"delivery.test": DELIVERY}
BROKEN = ("broken.test",)  # nsd answers SERVFAIL for every name in it


@pytest.fixture(scope="session")
def nsd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsServer]:
    with dns_server(tmp_path_factory.mktemp("nsd"), ZONES, BROKEN) as server:
        yield server


@pytest.fixture
def resolver(nsd: DnsServer) -> Iterator[DnsServer]:
    """Delivery resolves through the loopback nsd, configured as a worker configures it from
    ``[node] dns_servers`` / ``dns_timeout``; the defaults come back afterwards."""
    dns.configure([nsd.address], timeout=3.0)
    yield nsd
    dns.configure()


# The name the peer node's certificate is issued for (also its [node] hostname).
PEER_NAME = "mx.test.example"


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_keys(tmp_path: Path, ca: trustme.CA) -> str:
    """Certificate and key for the peer node; the ``[[servers]]`` keys that select them."""
    cert = ca.issue_cert(PEER_NAME, "127.0.0.1")
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    return 'tls_certificate = "cert.pem"\ntls_key = "key.pem"\n'


@pytest.fixture
def ca_file(tmp_path: Path, ca: trustme.CA) -> Path:
    """The test CA as a PEM bundle, for TlsPolicy.ca_file."""
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path
