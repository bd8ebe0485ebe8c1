"""Receiving throughput: Mailwarden against Postfix and Haraka, in one run, as ratios.

Each server is driven for the same time by Debian's smtpping (``-r -w0 -P8``, 10 KiB messages),
in interleaved rounds so that machine noise hits all of them alike. Mailwarden runs with its
default durability (fsync, group commit) and benchmarks/benchmark_policy.py, whose connect,
helo, mail_from, rcpt_to and data hooks each do a lookup. Postfix durably queues (never
delivers); Haraka discards (no disk at all: its ceiling).

    python benchmarks/receive_throughput.py [--seconds 10] [--rounds 3] [--workers N]
    python benchmarks/receive_throughput.py --inbound-filter [...]

Prints the median messages per second of each server, the ratios, and Mailwarden's CPU time
per message and peak RSS.

``--inbound-filter`` (issue 9) runs examples/inbound_filter.py instead, with what it needs
(benchmarks/inbound_env.py): nsd on loopback serving the sender domain ``bench.test`` (SPF,
DMARC ``p=reject``, the DKIM key) and the DNS block list ``bl.test``, as ``[node]
dns_servers``; ``trusted_networks = []``, since loopback is trusted by default and trusted
clients skip the checks; a copy of the filter with a rate limit never reached and the
scanners excluded. Greylisting lets the benchmark through because its triplet (127.0.0.0/24,
alice@bench.test, test@example.org) is written to the datastore as one that already passed,
before the first message: every message still reads and rewrites it. Every server gets the
same smtpping options: ``-f`` a 10 KiB message DKIM-signed for bench.test (``--size`` sets its
size), ``-S alice@bench.test -H mail.bench.test``. A probe message is sent first and its
Authentication-Results checked for spf, dkim and dmarc pass, so that the run measures
acceptance, not refusals. The ratio to Postfix (plain accept) is shown against the target,
1.5.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
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
from inbound_env import Environment, FilterRun, environment, prepare_filter, probe, seed_greylisting

POLICY = Path(__file__).resolve().parent / "benchmark_policy.py"
FILTER_TARGET = 1.5  # issue 9


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
    parser.add_argument(
        "--inbound-filter",
        action="store_true",
        help="policy: examples/inbound_filter.py against a loopback nsd, scanners excluded",
    )
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        run(args, stack)


def inbound_filter(stack: contextlib.ExitStack, size_kib: int) -> tuple[Environment, FilterRun]:
    directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mailwarden-bench-")))
    env = stack.enter_context(environment(directory, size_kib))
    return env, prepare_filter(directory, env)


def run(args: argparse.Namespace, stack: contextlib.ExitStack) -> None:
    ports = {"mailwarden": 2625, "postfix": 2601, "haraka": 2603}
    policy: Path = POLICY
    options: tuple[str, ...] = ()  # smtpping's, the same for every server
    lines: dict[str, str] = {}
    env: Environment | None = None
    if args.inbound_filter:
        env, setup = inbound_filter(stack, args.size)
        policy, options = setup.script, setup.smtpping_options
        lines = {"node_line": setup.node_line, "server_line": setup.server_line}
    mailwarden = start_mailwarden(ports["mailwarden"], args.workers, policy, **lines)
    stack.callback(mailwarden.stop)  # also when the probe or a peer fails to start
    if env is not None:
        seed_greylisting(mailwarden.directory / "data")
        found = probe(ports["mailwarden"], env, mailwarden.directory / "data" / "spool")
        print(f"inbound filter: a probe message got Authentication-Results: {found}", flush=True)
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
                smtpping_rate(port, args.warmup, args.parallel, args.size, options)
                if name == "mailwarden":
                    pids = sorted({mailwarden.process.pid, *mailwarden.workers()})
                    before = cpu_seconds(pids)
                counts = smtpping_rate(port, args.seconds, args.parallel, args.size, options)
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
    if args.inbound_filter:
        print("  Mailwarden policy: examples/inbound_filter.py (scanners excluded)")
    result = {name: median(values) for name, values in rates.items() if values}
    for name, value in result.items():
        print(f"  {name:10s} {value:8.0f} msg/s (median of per-second counts)")
    if result.get("postfix"):
        ratio = result["mailwarden"] / result["postfix"]
        target = ""
        if args.inbound_filter:  # issue 9: the filter keeps >= 1.5x Postfix's plain accept
            target = (
                f" (target >= {FILTER_TARGET}: {'met' if ratio >= FILTER_TARGET else 'NOT met'})"
            )
        print(f"  Mailwarden / Postfix = {ratio:.2f}{target}")
    if result.get("haraka"):
        print(f"  Mailwarden / Haraka  = {result['mailwarden'] / result['haraka']:.2f}")
    if mw_messages:
        print(f"  Mailwarden CPU per message: {mw_cpu * 1000 / mw_messages:.3f} ms")
    print(f"  Mailwarden peak RSS per worker: {', '.join(f'{k / 1024:.1f} MiB' for k in peak_rss)}")


if __name__ == "__main__":
    main()
