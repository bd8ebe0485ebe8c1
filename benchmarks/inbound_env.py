"""What the inbound-filter benchmarks share: a loopback nsd with the sender domain's records, a
DKIM key and a message signed with it, and the copy of examples/inbound_filter.py they run.

The zones (served by the tests' nsd helper, tests/support/dns_server.py):

* ``bench.test``, the sender's domain: SPF ``v=spf1 ip4:127.0.0.0/8 -all`` (smtpping connects
  from 127.0.0.1, so SPF passes), DMARC ``p=reject``, and the public key of selector
  ``bench`` (RSA 2048, rsa-sha256: what most senders sign with);
* ``bl.test``, a DNS block list (RFC 5782) with only its test entry 127.0.0.2, so that the
  benchmark's client, 127.0.0.1, is looked up and found unlisted (NXDOMAIN), the usual case.

The copy of the filter differs from the example in three settings and one function
(``configured_filter``): the DNSBL zone is ``bl.test``, the rate limit is one no benchmark
reaches (every message still makes its ``rate()`` call), the authserv-id is fixed, and
``_scan`` answers "clean" without asking clamd or rspamd, because issue 9 measures the filter
with the scanners excluded.
"""

from __future__ import annotations

import asyncio
import base64
import re
import smtplib
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python benchmarks/…`: the tests' nsd helper
    sys.path.insert(0, str(ROOT))

from tests.support.dns_server import DnsServer, dns_server  # noqa: E402

from mailwarden.lib import dkim  # noqa: E402
from mailwarden.lib.backends import library_dir  # noqa: E402
from mailwarden.lib.datastore import Datastore, SqliteDatastore  # noqa: E402
from mailwarden.policy.context import Message, memory_body  # noqa: E402
from mailwarden.policy.headers import Headers  # noqa: E402
from mailwarden.spool.reader import read_message_bytes  # noqa: E402

EXAMPLE = ROOT / "examples" / "inbound_filter.py"
DOMAIN = "bench.test"
SELECTOR = "bench"
SENDER = f"alice@{DOMAIN}"
HELO = f"mail.{DOMAIN}"
RECIPIENT = "test@example.org"  # what benchmarks/common.py's smtpping sends to
CLIENT_IP = "127.0.0.1"
DNSBL_ZONE = "bl.test"
AUTHSERV_ID = "mx.example.org"
GREYLIST_NAMESPACE = "greylisting"  # the example's

SETTINGS = {
    "DNSBL_ZONES": f"({DNSBL_ZONE!r},)",
    "RATE_LIMIT": "10**12",
    "AUTHSERV_ID": repr(AUTHSERV_ID),
}

# Appended to the copy: data() looks _scan up when it runs, so this one is used.
NO_SCANNERS = '''

async def _scan(
    conn: Connection, tx: Transaction, message: Message
) -> tuple[clamav.ClamResult, rspamd.RspamdResult]:
    """Benchmark copy: scanners excluded (issue 9), every message is clean."""
    return clamav.ClamResult(clean=True), rspamd.RspamdResult(0.0, 15.0, "no action")
'''


@dataclass(frozen=True)
class Environment:
    server: DnsServer
    key_pem: bytes
    signed: bytes  # a DKIM-signed message, CRLF line ends, ready for DATA

    def message(self) -> Message:
        header, _, body = self.signed.partition(b"\r\n\r\n")
        return Message(Headers.parse(header + b"\r\n"), len(body), memory_body(body))


def _public_record(key: rsa.RSAPrivateKey) -> str:
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    text = base64.b64encode(der).decode()
    # A TXT character-string holds at most 255 octets (RFC 1035 §3.3.14): split the key.
    chunks = " ".join(f'"{text[i : i + 200]}"' for i in range(0, len(text), 200))
    return f'"v=DKIM1; k=rsa; p=" {chunks}'


def zones(key: rsa.RSAPrivateKey) -> dict[str, str]:
    return {
        DOMAIN: (
            f"@ IN A {CLIENT_IP}\n"
            '@ IN TXT "v=spf1 ip4:127.0.0.0/8 -all"\n'
            '_dmarc IN TXT "v=DMARC1; p=reject"\n'
            f"{SELECTOR}._domainkey IN TXT {_public_record(key)}\n"
        ),
        DNSBL_ZONE: '2.0.0.127 IN A 127.0.0.2\n2.0.0.127 IN TXT "listed: test entry"\n',
    }


def unsigned_message(size_kib: int) -> bytes:
    """A plain text message of about ``size_kib`` KiB from SENDER to RECIPIENT."""
    line = b"The quarterly figures are attached; see the summary below for details.\r\n"
    body = line * max(1, size_kib * 1024 // len(line))
    header = (
        f"From: Alice <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: quarterly figures\r\n"
        f"Date: Thu, 03 Dec 2026 12:00:00 +0000\r\nMessage-ID: <bench@{DOMAIN}>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n"
    ).encode()
    return header + b"\r\n" + body


async def _sign(raw: bytes, key_pem: bytes) -> bytes:
    header, _, body = raw.partition(b"\r\n\r\n")
    message = Message(Headers.parse(header + b"\r\n"), len(body), memory_body(body))
    await dkim.sign(message, domain=DOMAIN, selector=SELECTOR, key=key_pem)
    return await message.raw()


@contextmanager
def environment(directory: Path, size_kib: int = 10) -> Iterator[Environment]:
    """nsd serving the zones above (stopped afterwards) and a message signed for them."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    signed = asyncio.run(_sign(unsigned_message(size_kib), pem))
    with dns_server(directory / "nsd", zones(key), rate_limit=False) as server:
        yield Environment(server, pem, signed)


def configured_filter() -> str:
    """The example's source with SETTINGS in place of its values and the scanners left out."""
    source = EXAMPLE.read_text()
    for name, value in SETTINGS.items():
        pattern = re.compile(rf"^{name}(: [^=]+)? = .*$", re.MULTILINE)
        source, replaced = pattern.subn(f"{name} = {value}", source)
        if replaced != 1:
            raise RuntimeError(f"{EXAMPLE}: no single `{name} = …` line to configure")
    if "async def _scan(" not in source:
        raise RuntimeError(f"{EXAMPLE}: no _scan() to leave the scanners out of")
    return source + NO_SCANNERS


def greylist_key(sender: str = SENDER, recipient: str = RECIPIENT) -> str:
    """The example's triplet key for the benchmark's client (its /24), sender and recipient."""
    return f"127.0.0.0/24 {sender.lower()} {recipient.lower()}"


# -- the filter as the policy of receive_throughput.py ----------------------------------------


@dataclass(frozen=True)
class FilterRun:
    """What receive_throughput.py needs to run the filter: the script, the config lines, and
    smtpping's options (the signed message as its file, the sender and HELO SPF checks)."""

    script: Path
    node_line: str
    server_line: str
    smtpping_options: tuple[str, ...]


def prepare_filter(directory: Path, env: Environment) -> FilterRun:
    script = directory / "inbound_filter.py"
    script.write_text(configured_filter())
    message = directory / "signed.eml"
    message.write_bytes(env.signed)
    return FilterRun(
        script,
        node_line=f'dns_servers = ["{env.server.address}"]',
        # Loopback is trusted by default, and trusted clients skip every check: not here.
        server_line="trusted_networks = []",
        smtpping_options=("-f", str(message), "-S", SENDER, "-H", HELO),
    )


async def _seed(path: Path) -> None:
    store = Datastore(SqliteDatastore(path))
    try:
        await store.set(GREYLIST_NAMESPACE, greylist_key(), {"first": 0.0, "passed": True})
    finally:
        assert store.backend is not None
        await store.backend.close()


def seed_greylisting(data_dir: Path) -> None:
    """Record the benchmark's triplet as one that passed greylisting, as the filter does after
    a retry: its messages go through at once (each still reads and rewrites the entry)."""
    asyncio.run(_seed(library_dir(data_dir) / "datastore.db"))


def probe(port: int, env: Environment, spool: Path) -> str:
    """Send the signed message once as smtpping will; its Authentication-Results value, after
    checking that SPF, DKIM and DMARC all passed (else the benchmark would measure refusals)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.helo(HELO)
        replies = [client.mail(SENDER), client.rcpt(RECIPIENT), client.data(env.signed)]
    for code, text in replies:
        if code != 250:
            refused = f"{code} {text.decode(errors='replace')}"
            raise RuntimeError(f"the inbound filter refused the benchmark's message: {refused}")
    queued = re.search(rb"queued as (\S+)", replies[-1][1])
    stored = read_message_bytes(spool, queued.group(1).decode()) if queued else None
    header = (stored or b"").split(b"\r\n\r\n", 1)[0].decode(errors="replace")
    found = re.search(r"Authentication-Results: (.*?)\r\n(?! )", header, re.DOTALL)
    value = found.group(1).replace("\r\n", "") if found else ""
    if any(f"{check}=pass" not in value for check in ("spf", "dkim", "dmarc")):
        raise RuntimeError(f"the benchmark's message did not pass SPF, DKIM and DMARC: {value!r}")
    return value
