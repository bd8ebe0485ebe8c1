"""Receiving throughput: Mailwarden against Postfix and Haraka, in one run, as ratios.

Each server is driven for the same time by Debian's smtpping (``-r -w0 -P8``, 10 KiB messages),
in interleaved rounds so that machine noise hits all of them alike. Mailwarden runs with its
default durability (fsync, group commit) and benchmarks/benchmark_policy.py, whose connect,
helo, mail_from, rcpt_to and data hooks each do a lookup. Postfix durably queues (never
delivers); Haraka discards (no disk at all: its ceiling).

    python benchmarks/receive_throughput.py [--seconds 10] [--rounds 3] [--workers N]

Prints the median messages per second of each server, the ratios, and Mailwarden's CPU time
per message and peak RSS.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import (
    cpu_seconds,
    empty_postfix_queue,
    median,
    smtpping_rate,
    start_haraka,
    start_mailwarden,
    start_postfix,
    status_kib,
    stop_haraka,
    stop_postfix,
)

POLICY = Path(__file__).resolve().parent / "benchmark_policy.py"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per server per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--warmup", type=float, default=3.0, help="unmeasured load before each measurement"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="Mailwarden worker processes (default: one per core)",
    )
    parser.add_argument("--parallel", type=int, default=8, help="smtpping -P")
    parser.add_argument("--size", type=int, default=10, help="message size in KiB")
    parser.add_argument("--no-peers", action="store_true", help="measure Mailwarden only")
    args = parser.parse_args()

    ports = {"mailwarden": 2625, "postfix": 2601, "haraka": 2603}
    mailwarden = start_mailwarden(ports["mailwarden"], args.workers, POLICY)
    haraka_pid = None
    if not args.no_peers:
        start_postfix(ports["postfix"])
        haraka_pid = start_haraka(ports["haraka"])
    rates: dict[str, list[int]] = {name: [] for name in ports}
    mw_cpu = 0.0
    mw_messages = 0
    try:
        for round_number in range(args.rounds):
            for name, port in ports.items():
                if args.no_peers and name != "mailwarden":
                    continue
                # Warm up first: Postfix spawns its smtpd and cleanup processes on demand.
                smtpping_rate(port, args.warmup, args.parallel, args.size)
                if name == "mailwarden":
                    pids = sorted({mailwarden.process.pid, *mailwarden.workers()})
                    before = cpu_seconds(pids)
                counts = smtpping_rate(port, args.seconds, args.parallel, args.size)
                if name == "postfix":
                    empty_postfix_queue()
                if name == "mailwarden":
                    mw_cpu += cpu_seconds(pids) - before
                    # counts drop the partial first and last second; CPU covers all of it,
                    # so add their share back at the median rate for a fair per-message figure
                    mw_messages += sum(counts) + 2 * int(median(counts))
                rates[name].extend(counts)
                print(
                    f"round {round_number + 1} {name:10s} median {median(counts):7.0f} msg/s",
                    flush=True,
                )
        peak_rss = [status_kib(pid, "VmHWM") for pid in mailwarden.workers()]
    finally:
        mailwarden.stop()
        if not args.no_peers:
            stop_postfix()
            if haraka_pid is not None:
                stop_haraka(haraka_pid)

    print()
    print(f"{args.size} KiB messages, smtpping -r -w0 -P{args.parallel}, ", end="")
    workers = args.workers or "default (one per core)"
    print(f"{args.rounds} rounds of {args.seconds:.0f}s, Mailwarden workers={workers}")
    result = {name: median(values) for name, values in rates.items() if values}
    for name, value in result.items():
        print(f"  {name:10s} {value:8.0f} msg/s (median of per-second counts)")
    if result.get("postfix"):
        print(f"  Mailwarden / Postfix = {result['mailwarden'] / result['postfix']:.2f}")
    if result.get("haraka"):
        print(f"  Mailwarden / Haraka  = {result['mailwarden'] / result['haraka']:.2f}")
    if mw_messages:
        print(f"  Mailwarden CPU per message: {mw_cpu * 1000 / mw_messages:.3f} ms")
    print(f"  Mailwarden peak RSS per worker: {', '.join(f'{k / 1024:.1f} MiB' for k in peak_rss)}")


if __name__ == "__main__":
    main()
