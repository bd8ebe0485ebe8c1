"""Mailwarden's smtpping against Debian's smtpping 1.1.4, in rate mode, on the same peers.

Both meters run ``-r -w 0 -P N -s KiB`` against each peer for the same duration,
one after the other, then get SIGINT (as a user's Ctrl-C) and are reaped with
wait4(), whose resource usage covers the meter and every process it forked.
With ``--repeat R`` the pair runs R times, interleaved (Debian, ours, Debian, ours…),
so both meters see the same background load; the table shows medians.
Reported per meter and peer: messages per second (mean of the whole seconds after
the first), CPU milliseconds per message (start-up included), and the ratios
ours/Debian (median of the per-pair ratios). Ours runs from this checkout's ``src``;
in -r mode it schedules itself as SCHED_BATCH, and ``--debian-batch`` adds Debian's
meter run the same way (``chrt -b 0``) to show how much of the difference that is.

Peers (see ../shared/peers/README.md): Postfix queue-only on 2601 and Haraka
discard on 2603; ``--start-peers`` runs their start scripts first. Postfix's queue
is emptied (``postsuper -d ALL``) before each run against it.

Usage: python benchmarks/smtpping_vs_debian.py [--duration 10] [--parallel 8] [--repeat 3]
       [--processes N] [--scheduler batch|normal] [--start-peers] [--debian-batch]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from common import empty_postfix_queue

REPOSITORY = Path(__file__).resolve().parents[1]
PEER_SCRIPTS = REPOSITORY.parent / "shared" / "peers"
DEBIAN = ["/usr/bin/smtpping"]
OURS = [sys.executable, "-m", "mailwarden.tools.smtpping.cli"]


@dataclass
class Measurement:
    meter: str
    peer: str
    rate: float  # messages per second, steady state
    messages: int
    cpu_s: float

    @property
    def cpu_ms_per_message(self) -> float:
        return self.cpu_s * 1000 / self.messages if self.messages else float("nan")


def run_meter(name: str, command: list[str], port: int, args: argparse.Namespace) -> Measurement:
    """Run one meter for args.duration seconds; fails loudly if it prints no rate."""
    argv = [
        *command,
        *("-r", "-w", "0", "-P", str(args.parallel), "-s", str(args.size)),
        *("test@example.org", "@127.0.0.1", "-p", str(port)),
    ]
    env = dict(os.environ)
    if name == "mailwarden":
        if args.processes:
            argv.insert(len(command), f"--processes={args.processes}")
        if args.scheduler:
            argv.insert(len(command), f"--scheduler={args.scheduler}")
        # Measure this checkout, whatever copy of the package is installed.
        source = str(REPOSITORY / "src")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, env.get("PYTHONPATH")]))
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True, env=env
    )
    time.sleep(args.duration)
    os.killpg(process.pid, signal.SIGINT)
    output = process.stdout.read().decode() if process.stdout else ""
    _, _, usage = os.wait4(process.pid, 0)
    process.returncode = 0  # reaped above; keep Popen from waiting again
    counts = []
    for line in output.splitlines():
        if not line.strip().isdigit():
            break  # our rate summary follows the per-second lines
        counts.append(int(line))
    steady = counts[2:] or counts[1:]  # skip the initial 0 and the warm-up second
    if not steady:
        raise SystemExit(f"{name} printed no rate lines: {output!r}")
    return Measurement(
        meter=name,
        peer="",
        rate=sum(steady) / len(steady),
        messages=sum(counts),
        cpu_s=usage.ru_utime + usage.ru_stime,
    )


def start_peers() -> None:
    subprocess.run(["bash", str(PEER_SCRIPTS / "postfix-queue-only.sh"), "2601"], check=True)
    subprocess.run(
        ["bash", str(PEER_SCRIPTS / "haraka-discard.sh"), "2603"],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per meter and peer")
    parser.add_argument("--parallel", type=int, default=8, help="-P workers")
    parser.add_argument("--size", type=int, default=10, help="message size, KiB")
    parser.add_argument("--repeat", type=int, default=1, help="interleaved runs per meter and peer")
    parser.add_argument(
        "--processes", type=int, default=0, help="--processes for ours (default: its own choice)"
    )
    parser.add_argument("--peers", default="postfix:2601,haraka:2603", help="name:port,...")
    parser.add_argument("--start-peers", action="store_true", help="run the peer start scripts")
    parser.add_argument(
        "--scheduler",
        choices=("batch", "normal"),
        help="--scheduler for ours (default: its own, batch in -r mode)",
    )
    parser.add_argument(
        "--debian-batch",
        action="store_true",
        help="also run Debian's meter under chrt -b (SCHED_BATCH, as ours runs in -r mode)",
    )
    args = parser.parse_args()
    if args.start_peers:
        start_peers()
    meters = [("debian", DEBIAN), ("mailwarden", OURS)]
    if args.debian_batch:
        meters.append(("debian-batch", ["chrt", "-b", "0", *DEBIAN]))
    processes = f", --processes {args.processes}" if args.processes else ""
    processes += f", ours --scheduler {args.scheduler}" if args.scheduler else ""
    print(
        f"smtpping -r -w 0 -P {args.parallel} -s {args.size}{processes}, "
        f"{args.duration:.0f} s per run, {args.repeat} interleaved run(s) each, "
        f"medians, {os.cpu_count()} CPUs"
    )
    print(f"{'peer':<9}{'meter':<14}{'msg/s':>9}{'CPU ms/msg':>12}")
    for spec in args.peers.split(","):
        peer, port = spec.split(":")
        runs: dict[str, list[Measurement]] = {name: [] for name, _ in meters}
        for _ in range(args.repeat):
            for name, command in meters:
                if peer == "postfix":
                    # Its queue manager keeps rescanning what earlier runs queued.
                    empty_postfix_queue()
                    time.sleep(1)
                measurement = run_meter(name, command, int(port), args)
                measurement.peer = peer
                runs[name].append(measurement)
                time.sleep(2)  # let TIME_WAIT sockets and the peer's queue settle
        for name, _ in meters:
            median = _median_of(peer, name, runs[name])
            print(f"{peer:<9}{name:<14}{median.rate:>9.0f}{median.cpu_ms_per_message:>12.3f}")
        ours = runs["mailwarden"]
        for name, _ in meters:
            if name == "mailwarden":
                continue
            pairs = list(zip(runs[name], ours, strict=True))
            rate_ratio = statistics.median(o.rate / d.rate for d, o in pairs)
            cpu_ratio = statistics.median(
                o.cpu_ms_per_message / d.cpu_ms_per_message for d, o in pairs
            )
            print(f"{'':<9}{'vs ' + name:<14}{rate_ratio:>8.2f}x{cpu_ratio:>11.2f}x")


def _median_of(peer: str, meter: str, runs: list[Measurement]) -> Measurement:
    """A Measurement holding the median rate and the median CPU per message of runs."""
    cpu_ms = statistics.median(m.cpu_ms_per_message for m in runs)
    return Measurement(
        meter=meter,
        peer=peer,
        rate=statistics.median(m.rate for m in runs),
        messages=1000,
        cpu_s=cpu_ms,
    )


if __name__ == "__main__":
    main()
