"""A real authoritative DNS server (Debian's nsd) on a free loopback port, serving zone files
the test writes, so that the library's lookups go over real UDP/TCP to a real server.

    with dns_server(tmp_path, {"example.test": ZONE_TEXT}) as server:
        server.address   # "127.0.0.1:PORT", for dns.configure([...]) or [node] dns_servers

A zone named in ``broken`` is declared to nsd without a loadable file: nsd answers SERVFAIL
for it, which is how the tests get a real SERVFAIL.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import textwrap
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import dns.message
import dns.query

NSD = shutil.which("nsd") or "/usr/sbin/nsd"

SOA = """\
$TTL 300
@ IN SOA ns.{zone}. hostmaster.{zone}. 1 3600 600 86400 {negative_ttl}
@ IN NS ns.{zone}.
"""


def free_dns_port() -> int:
    """A loopback port free for both UDP and TCP (nsd binds both)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            with socket.socket() as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port


@dataclass
class DnsServer:
    host: str
    port: int
    directory: Path
    process: subprocess.Popen[bytes]

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def log(self) -> str:
        path = self.directory / "nsd.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _config(
    directory: Path,
    port: int,
    zones: Mapping[str, str],
    broken: tuple[str, ...],
    rate_limit: bool = True,
) -> str:
    text = textwrap.dedent(
        f"""\
        server:
          ip-address: 127.0.0.1@{port}
          do-ip6: no
          server-count: 1
          username: ""
          chroot: ""
          zonesdir: "{directory}"
          database: ""
          zonelistfile: "{directory}/zone.list"
          xfrdfile: "{directory}/xfrd.state"
          pidfile: "{directory}/nsd.pid"
          logfile: "{directory}/nsd.log"
          verbosity: 2
        remote-control:
          control-enable: no
        """
    )
    if not rate_limit:
        # Debian builds nsd with response rate limiting: above 200 answers a second to one
        # /24 it drops or truncates them, which a benchmark's loopback client exceeds.
        text = text.replace(
            "remote-control:", "  rrl-ratelimit: 0\n  rrl-whitelist-ratelimit: 0\nremote-control:"
        )
    for zone in [*zones, *broken]:
        text += f'zone:\n  name: "{zone}"\n  zonefile: "{zone}.zone"\n'
    return text


def answers(port: int, timeout: float = 0.2) -> bool:
    """Whether a DNS server on 127.0.0.1:``port`` answers (any reply, NXDOMAIN included)."""
    query = dns.message.make_query("ns.probe.invalid.", "A")
    try:
        dns.query.udp(query, "127.0.0.1", port=port, timeout=timeout)
    except (OSError, dns.exception.Timeout):
        return False
    return True


@contextmanager
def dns_server(
    directory: Path,
    zones: Mapping[str, str],
    broken: tuple[str, ...] = (),
    *,
    rate_limit: bool = True,
    complete: Mapping[str, str] | None = None,
    negative_ttl: int = 300,
) -> Iterator[DnsServer]:
    """Run nsd in the foreground serving ``zones`` (name -> records, the SOA and NS added);
    stop it afterwards. ``rate_limit=False`` turns nsd's response rate limiting off (for
    benchmarks, which ask far more than 200 questions a second). ``complete``: zones whose
    text is written as given, SOA included (signed zones, tests/support/dnssec.py).
    ``negative_ttl`` is the SOA MINIMUM field, how long resolvers keep "no such name"
    answers (RFC 2308 §5)."""
    directory.mkdir(parents=True, exist_ok=True)
    for zone, text in (complete or {}).items():
        (directory / f"{zone}.zone").write_text(text)
    zones = {**zones, **dict.fromkeys(complete or {}, "")}
    for zone, records in zones.items():
        if zone in (complete or {}):
            continue
        body = SOA.format(zone=zone, negative_ttl=negative_ttl) + textwrap.dedent(records)
        (directory / f"{zone}.zone").write_text(body)
    port = free_dns_port()
    config = directory / "nsd.conf"
    config.write_text(_config(directory, port, zones, broken, rate_limit))
    check = subprocess.run(["nsd-checkconf", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    process = subprocess.Popen(
        [NSD, "-d", "-c", str(config)],
        stderr=subprocess.STDOUT,
        stdout=(directory / "nsd.out").open("wb"),
    )
    server = DnsServer("127.0.0.1", port, directory, process)
    try:
        deadline = time.monotonic() + 15
        while not answers(port):
            if process.poll() is not None:
                raise RuntimeError(f"nsd exited with {process.returncode}: {server.log()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"nsd not answering on {server.address}: {server.log()}")
            time.sleep(0.05)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                process.kill()
            process.wait(timeout=10)


@contextmanager
def silent_server() -> Iterator[str]:
    """A UDP socket on loopback that reads queries and never answers: a DNS server that is
    down without saying so. Yields its ``ip:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sock.getsockname()[1]}"
