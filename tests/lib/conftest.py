"""Fixtures of the script library's tests: a real DNS server (nsd) on loopback with the zones
the DNS, DNSBL and SPF tests query, and the library pointed at it; real redis-server and
PostgreSQL servers for the rate and datastore backends (tests/support/state_servers.py); real
clamd, spamd and rspamd daemons for the scanners (tests/support/scanners.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.dns_server import DnsServer, dns_server
from tests.support.scanners import (
    ClamdServer,
    RspamdServer,
    SpamdServer,
    clamd_server,
    rspamd_server,
    spamd_server,
)
from tests.support.state_servers import (
    PostgresServer,
    RedisServer,
    postgres_server,
    redis_server,
)

from mailwarden.lib import dns

# A TXT record longer than one 255-byte character-string is split by the zone file into
# several; the library joins them (RFC 7208 §3.3).
LONG_TXT = "x" * 250 + "y" * 20

EXAMPLE = f"""\
@        IN MX 20 mx2.example.test.
@        IN MX 10 mx1.example.test.
@        IN A 192.0.2.10
@        IN TXT "hello" " world"
@        IN TXT "{LONG_TXT[:250]}" "{LONG_TXT[250:]}"
www      IN A 192.0.2.11
www      IN A 192.0.2.12
www      IN AAAA 2001:db8::11
alias    IN CNAME www.example.test.
mx1      IN A 192.0.2.21
mx2      IN A 192.0.2.22
mx1      IN AAAA 2001:db8::21
_25._tcp.mx1 IN TLSA 3 1 1 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
_25._tcp.mx1 IN TLSA 2 0 0 3082cafe
nullmx   IN MX 0 .
confirmed IN A 127.0.0.10
other    IN A 127.0.0.10
liar     IN A 192.0.2.99
v6host   IN AAAA 2001:db8::10
nodata   IN A 192.0.2.30
"""

# SPF (RFC 7208): one domain per mechanism the tests exercise.
SPF = """\
@        IN TXT "v=spf1 ip4:192.0.2.0/25 include:inc.spf.test -all"
inc      IN TXT "v=spf1 ip4:198.51.100.7 -all"
soft     IN TXT "v=spf1 a:host.spf.test ~all"
host     IN A 203.0.113.5
mx       IN TXT "v=spf1 mx -all"
mx       IN MX 10 mail.spf.test.
mail     IN A 203.0.113.25
neutral  IN TXT "v=spf1 ?all"
two      IN TXT "v=spf1 -all"
two      IN TXT "v=spf1 +all"
broken   IN TXT "v=spf1 include:failing.broken.test -all"
helo     IN TXT "v=spf1 ip4:203.0.113.80 -all"
exp      IN TXT "v=spf1 -all exp=why.spf.test"
why      IN TXT "%{i} is not one of %{d}'s servers"
"""

# 127.0.0.0/8 and 2001:db8::/32 reverse zones: PTRs for the FCrDNS tests.
REVERSE_V4 = """\
10.0.0   IN PTR confirmed.example.test.
10.0.0   IN PTR liar.example.test.
10.0.0   IN PTR missing.example.test.
"""
REVERSE_V6 = """\
0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0 IN PTR v6host.example.test.
"""

# A DNS block list (RFC 5782): 127.0.0.2 is the test entry every list must have.
DNSBL = """\
2.0.0.127        IN A 127.0.0.2
2.0.0.127        IN TXT "listed: test entry, see https://bl.example.test/127.0.0.2"
4.0.0.127        IN A 127.0.0.2
4.0.0.127        IN A 127.0.0.4
4.0.0.127        IN TXT "listed for spam"
4.0.0.127        IN TXT "and as a dynamic address"
5.0.0.127        IN A 127.0.0.4
6.0.0.127        IN A 192.0.2.1
1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2 IN A 127.0.0.2
"""

ZONES = {
    "example.test": EXAMPLE,
    "spf.test": SPF,
    "127.in-addr.arpa": REVERSE_V4,
    "8.b.d.0.1.0.0.2.ip6.arpa": REVERSE_V6,
    "bl.test": DNSBL,
}
BROKEN = ("broken.test",)  # nsd answers SERVFAIL for these


@pytest.fixture(scope="session")
def nsd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsServer]:
    directory: Path = tmp_path_factory.mktemp("nsd")
    with dns_server(directory, ZONES, BROKEN) as server:
        yield server


@pytest.fixture
def resolver(nsd: DnsServer) -> Iterator[DnsServer]:
    """The library resolves through the loopback nsd; the defaults come back afterwards."""
    dns.configure([nsd.address], timeout=3.0)
    yield nsd
    dns.configure()


@pytest.fixture(scope="session")
def redis_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis(redis_session: RedisServer) -> RedisServer:
    """The session's redis-server, emptied for this test."""
    import redis as redis_py

    with redis_py.Redis.from_url(redis_session.url) as client:
        client.flushall()
    return redis_session


@pytest.fixture(scope="session")
def postgres_session() -> Iterator[PostgresServer]:
    with postgres_server() as server:
        yield server


@pytest.fixture
def postgres(postgres_session: PostgresServer) -> PostgresServer:
    """The session's PostgreSQL, without the datastore table (made again at first use)."""
    import psycopg

    with psycopg.connect(postgres_session.url, autocommit=True) as connection:
        connection.execute("DROP TABLE IF EXISTS mailwarden_datastore")
    return postgres_session


@pytest.fixture(scope="session")
def clamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClamdServer]:
    with clamd_server(tmp_path_factory.mktemp("clamd")) as server:
        yield server


@pytest.fixture(scope="session")
def spamd() -> Iterator[SpamdServer]:
    with spamd_server() as server:
        yield server


@pytest.fixture(scope="session")
def rspamd_daemon() -> Iterator[RspamdServer]:
    with rspamd_server() as server:
        yield server
