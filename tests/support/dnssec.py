"""DNSSEC on loopback: zones signed with ldns-signzone, served by nsd, validated by unbound.

    with validating_resolver(tmp_path, signed={"dane.test": RECORDS},
                             unsigned={"plain.test": RECORDS}) as resolver:
        resolver.address   # "127.0.0.1:PORT": unbound, for [node] dns_servers

unbound has a trust anchor (the DS of the zone's key) for each signed zone only, and stub
zones to nsd for all of them: answers from a signed zone come back with AD, those of an
unsigned zone without (insecure: no anchor covers it), and data whose signature does not
verify as SERVFAIL (bogus). ``corrupt`` names owner names (e.g. ``_25._tcp.bad.dane.test``)
whose RRSIGs are damaged after signing, for a bogus answer in an otherwise secure zone.
"""

from __future__ import annotations

import shutil
import subprocess
import textwrap
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from tests.support.dns_server import SOA, answers, dns_server, free_dns_port

UNBOUND = shutil.which("unbound") or "/usr/sbin/unbound"


@dataclass
class Resolver:
    host: str
    port: int
    directory: Path

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def log(self) -> str:
        path = self.directory / "unbound.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _sign(directory: Path, zone: str, records: str, corrupt: tuple[str, ...]) -> tuple[str, str]:
    """The signed zone text and the DS record of its key (ECDSA P-256, one key signing all)."""
    work = directory / f"keys-{zone}"
    work.mkdir(parents=True, exist_ok=True)
    unsigned = work / f"{zone}.zone"
    unsigned.write_text(SOA.format(zone=zone, negative_ttl=300) + textwrap.dedent(records))
    keygen = subprocess.run(
        ["ldns-keygen", "-a", "ECDSAP256SHA256", "-k", zone],
        cwd=work,
        capture_output=True,
        text=True,
        check=True,
    )
    key = keygen.stdout.strip()
    subprocess.run(
        ["ldns-signzone", "-o", zone, str(unsigned), key], cwd=work, check=True, capture_output=True
    )
    signed = (work / f"{zone}.zone.signed").read_text()
    lines = []
    for line in signed.splitlines():
        fields = line.split()
        if len(fields) > 4 and fields[3] == "RRSIG" and fields[0].rstrip(".") in corrupt:
            # Flip the signature's first base64 character: it no longer verifies (bogus).
            signature = fields[-1]
            fields[-1] = ("B" if signature[0] != "B" else "C") + signature[1:]
            line = "\t".join(fields)
        lines.append(line)
    ds = (work / f"{key}.ds").read_text().strip()
    return "\n".join(lines) + "\n", ds


def _config(directory: Path, port: int, nsd: str, zones: list[str], anchors: list[str]) -> str:
    host, nsd_port = nsd.split(":")
    text = textwrap.dedent(
        f"""\
        server:
          interface: 127.0.0.1
          port: {port}
          do-ip6: no
          username: ""
          chroot: ""
          directory: "{directory}"
          pidfile: "{directory}/unbound.pid"
          use-syslog: no
          logfile: "{directory}/unbound.log"
          verbosity: 1
          val-log-level: 2
          do-not-query-localhost: no
          access-control: 127.0.0.0/8 allow
          module-config: "validator iterator"
          local-zone: "test." nodefault
          cache-max-ttl: 0
          cache-max-negative-ttl: 0
        remote-control:
          control-enable: no
        """
    )
    text = text.replace(
        "remote-control:", "".join(f'  trust-anchor: "{a}"\n' for a in anchors) + "remote-control:"
    )
    for zone in zones:
        text += f'stub-zone:\n  name: "{zone}"\n  stub-addr: {host}@{nsd_port}\n'
    return text


@contextmanager
def validating_resolver(
    directory: Path,
    *,
    signed: Mapping[str, str],
    unsigned: Mapping[str, str] | None = None,
    corrupt: tuple[str, ...] = (),
) -> Iterator[Resolver]:
    """nsd serving ``signed`` (signed here) and ``unsigned`` zones, behind a validating
    unbound; yields the unbound. Both stop afterwards."""
    directory.mkdir(parents=True, exist_ok=True)
    unsigned = unsigned or {}
    zones: dict[str, str] = {}
    anchors = []
    for zone, records in signed.items():
        text, ds = _sign(directory, zone, records, corrupt)
        zones[zone] = text
        anchors.append(ds)
    with dns_server(directory / "nsd", unsigned, complete=zones) as nsd:
        port = free_dns_port()
        config = directory / "unbound.conf"
        config.write_text(_config(directory, port, nsd.address, [*zones, *unsigned], anchors))
        check = subprocess.run(["unbound-checkconf", str(config)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        process = subprocess.Popen(
            [UNBOUND, "-d", "-c", str(config)],
            stdout=(directory / "unbound.out").open("wb"),
            stderr=subprocess.STDOUT,
        )
        resolver = Resolver("127.0.0.1", port, directory)
        try:
            deadline = time.monotonic() + 15
            while not answers(port, timeout=0.3):
                if process.poll() is not None:
                    raise RuntimeError(
                        f"unbound exited with {process.returncode}: {resolver.log()}"
                    )
                if time.monotonic() > deadline:
                    raise TimeoutError(f"unbound not answering: {resolver.log()}")
                time.sleep(0.05)
            yield resolver
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    process.kill()
                process.wait(timeout=10)
