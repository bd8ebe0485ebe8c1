"""STARTTLS accept throughput (issue 8): Mailwarden against Postfix, in one run, as a ratio.

    python benchmarks/tls_accept.py [--seconds 10] [--rounds 3] [--warmup 2] [--workers N]
        [--processes 2] [--threads 4] [--size 1] [--modes plain,starttls,resume] [--no-peers]

Both servers get the same certificate (a trustme CA's ECDSA P-256 leaf for mx.bench.example)
and the same load, benchmarks/tls_load.py: ``--processes`` x ``--threads`` clients (default
2 x 4, eight connections in flight, like the receiving benchmark's ``-P8``), each a loop of
connections carrying one ``--size`` KiB message, in three modes: ``plain`` (no TLS),
``starttls`` (a full TLS 1.3 handshake, ECDHE, on every connection) and ``resume`` (each client
offers the ticket its previous connection got). Rounds interleave servers and modes so that
machine noise hits them alike; each measurement is preceded by ``--warmup`` seconds of the
same load, unmeasured (Postfix forks its smtpd processes on demand).

Mailwarden runs as ``mailwarden run`` with its defaults (one worker per core, fsync, group
commit, no policy script) plus ``tls_certificate``/``tls_key``. Postfix is the queue-only peer
of ../shared/peers/ with ``smtpd_tls_security_level = may`` and the same certificate; its own
TLS settings (``smtpd_tls_*``) are put back as they were at the end.

Prints, per mode, the median connections per second of each server (median of the per-second
counts, the first second dropped) and the ratio (the target, 2x, is for ``starttls``); the
server-side CPU per connection (all the server's processes, from /proc, including the children
they reaped, since Postfix's smtpd processes exit after ``max_use`` connections); from those,
the handshake cost (``starttls`` minus ``plain``) and what resumption saves (``starttls`` minus
``resume``), and the share of offered tickets each server accepted.

Run it from a worktree with an absolute ``PYTHONPATH`` (``PYTHONPATH=$PWD/src``): Mailwarden is
started in its own temporary directory, where a relative one would silently pick the installed
package instead.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import trustme
from common import median, process_tree, start_mailwarden, start_postfix, stop_postfix

HERE = Path(__file__).resolve().parent
TARGET = 2.0  # issue 8: STARTTLS accept throughput at least twice Postfix's
POSTFIX_TLS_KEYS = (
    "smtpd_tls_security_level",
    "smtpd_tls_cert_file",
    "smtpd_tls_key_file",
    "smtpd_tls_loglevel",
)
POSTFIX_MASTER_PID = Path("/var/spool/postfix/pid/master.pid")


def server_cpu_seconds(root: int) -> float:
    """CPU time of ``root`` and its descendants, plus that of the children they reaped."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in process_tree(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    return total / ticks


@dataclass
class Results:
    rates: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    cpu: dict[tuple[str, str], float] = field(default_factory=dict)
    connections: dict[tuple[str, str], int] = field(default_factory=dict)
    resumed: dict[tuple[str, str], int] = field(default_factory=dict)
    offered: dict[tuple[str, str], int] = field(default_factory=dict)
    failures: dict[tuple[str, str], int] = field(default_factory=dict)

    def add(self, key: tuple[str, str], load: dict[str, object], cpu: float) -> None:
        per_second = list(load["per_second"])  # type: ignore[call-overload]
        self.rates.setdefault(key, []).extend(per_second[1:])
        self.cpu[key] = self.cpu.get(key, 0.0) + cpu
        for name in ("connections", "resumed", "offered", "failures"):
            table = getattr(self, name)
            table[key] = table.get(key, 0) + int(load[name])  # type: ignore[call-overload]

    def cpu_ms(self, key: tuple[str, str]) -> float:
        return self.cpu[key] * 1000 / max(1, self.connections[key])


def load(port: int, mode: str, seconds: float, args: argparse.Namespace) -> dict[str, object]:
    command = [
        sys.executable,
        str(HERE / "tls_load.py"),
        f"--port={port}",
        f"--mode={mode}",
        f"--seconds={seconds}",
        f"--processes={args.processes}",
        f"--threads={args.threads}",
        f"--size={args.size}",
    ]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out)  # type: ignore[no-any-return]


def write_certificate(directory: Path) -> tuple[Path, Path]:
    leaf = trustme.CA().issue_cert("mx.bench.example")
    certificate, key = directory / "server.pem", directory / "server.key"
    certificate.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    return certificate, key


def postfix_tls(certificate: Path, key: Path) -> dict[str, str | None]:
    """Give the running Postfix our certificate; returns its explicit settings to restore."""
    explicit = subprocess.run(["postconf", "-n"], capture_output=True, text=True).stdout
    saved: dict[str, str | None] = dict.fromkeys(POSTFIX_TLS_KEYS)
    for line in explicit.splitlines():
        name, _, value = line.partition(" = ")
        if name in saved:
            saved[name] = value
    subprocess.run(
        [
            "postconf",
            "-e",
            "smtpd_tls_security_level = may",
            f"smtpd_tls_cert_file = {certificate}",
            f"smtpd_tls_key_file = {key}",
            "smtpd_tls_loglevel = 0",
        ],
        check=True,
    )
    subprocess.run(["postfix", "reload"], check=True, capture_output=True)
    return saved


def restore_postfix(saved: dict[str, str | None]) -> None:
    remove = [name for name, value in saved.items() if value is None]
    if remove:
        subprocess.run(["postconf", "-X", *remove], check=True)
    keep = [f"{name} = {value}" for name, value in saved.items() if value is not None]
    if keep:
        subprocess.run(["postconf", "-e", *keep], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per server, mode and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured load before each")
    parser.add_argument("--workers", type=int, default=None, help="default: one per core")
    parser.add_argument("--processes", type=int, default=2, help="load generator processes")
    parser.add_argument("--threads", type=int, default=4, help="clients per load process")
    parser.add_argument("--size", type=int, default=1, help="message size in KiB")
    parser.add_argument("--modes", default="plain,starttls,resume")
    parser.add_argument("--no-peers", action="store_true", help="measure Mailwarden only")
    args = parser.parse_args()
    modes = args.modes.split(",")
    with contextlib.ExitStack() as stack:
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tls-bench-")))
        certificate, key = write_certificate(directory)
        ports = {"mailwarden": 2625} | ({} if args.no_peers else {"postfix": 2601})
        tls_lines = f'tls_certificate = "{certificate}"\ntls_key = "{key}"'
        mailwarden = start_mailwarden(
            ports["mailwarden"], args.workers, None, server_line=tls_lines
        )
        stack.callback(mailwarden.stop)
        if not args.no_peers:
            start_postfix(ports["postfix"])
            stack.callback(stop_postfix)
            stack.callback(restore_postfix, postfix_tls(certificate, key))
        roots = {"mailwarden": mailwarden.process.pid}
        results = Results()
        for round_number in range(args.rounds):
            for mode in modes:
                for name, port in ports.items():
                    if name == "postfix":
                        roots[name] = int(POSTFIX_MASTER_PID.read_text().split()[0])
                    load(port, mode, args.warmup, args)
                    before = server_cpu_seconds(roots[name])
                    measured = load(port, mode, args.seconds, args)
                    results.add((name, mode), measured, server_cpu_seconds(roots[name]) - before)
                    rate = median(list(measured["per_second"])[1:])  # type: ignore[call-overload]
                    print(
                        f"round {round_number + 1} {mode:8s} {name:10s} {rate:7.0f} conn/s"
                        f"  failures {measured['failures']}",
                        flush=True,
                    )
    report(args, modes, list(ports), results)


def report(args: argparse.Namespace, modes: list[str], names: list[str], results: Results) -> None:
    workers = args.workers or "default (one per core)"
    print()
    print(
        f"one {args.size} KiB message per connection, {args.processes}x{args.threads} clients, "
        f"{args.rounds} rounds of {args.seconds:.0f}s, Mailwarden workers={workers}"
    )
    for mode in modes:
        rates = {name: median(results.rates[(name, mode)]) for name in names}
        line = "  ".join(f"{name} {rate:6.0f} conn/s" for name, rate in rates.items())
        if rates.get("postfix"):
            ratio = rates["mailwarden"] / rates["postfix"]
            line += f"  Mailwarden / Postfix = {ratio:.2f}"
            if mode == "starttls":
                line += f" (target >= {TARGET}: {'met' if ratio >= TARGET else 'NOT met'})"
        print(f"  {mode:8s} {line}")
    print("  server CPU per connection (ms):")
    for name in names:
        costs = {mode: results.cpu_ms((name, mode)) for mode in modes}
        print(f"    {name:10s} " + "  ".join(f"{m} {c:.3f}" for m, c in costs.items()), end="")
        if "plain" in costs and "starttls" in costs:
            print(f"  handshake {costs['starttls'] - costs['plain']:.3f}", end="")
        if "starttls" in costs and "resume" in costs:
            print(f"  resumption saves {costs['starttls'] - costs['resume']:.3f}", end="")
        if "resume" in modes:
            offered = results.offered[(name, "resume")]
            share = results.resumed[(name, "resume")] / offered if offered else 0.0
            print(f"  tickets accepted {share:.0%}", end="")
        failures = sum(results.failures[(name, mode)] for mode in modes)
        print(f"  failures {failures}")


if __name__ == "__main__":
    main()
