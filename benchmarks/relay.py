"""Relay, end to end: Mailwarden against Postfix, in one run, accepting and delivering to one sink.

Load: Postfix's ``smtp-source -s 8 -l 10240 -m 5000`` (8 parallel sessions, 10 KiB payload, one
message and one recipient per connection, as smtp-source does without -d) into the server
under test, which relays everything to one Postfix ``smtp-sink`` started by this script on a
free loopback port. Measured: the time from the first message (smtp-source starts) until every
message is at the sink (its own ``-c`` counters) and the server's queue is empty, polled every
50 ms. Queue empty: Mailwarden: no recipient in a non-final state in any spool shard (sqlite3,
read-only); Postfix: no file in its maildrop, incoming, active, deferred and hold queues.
Each run then confirms with ``mailwarden queue list --json`` / ``postqueue -j`` (not timed).

Servers: a default ``mailwarden run`` of this checkout (only its data directory in a temp dir,
its port, ``user = "root"`` when run as root, and one ``[[routes]]`` entry ``domains = ["*"]``,
``next_hop = "[127.0.0.1]:SINKPORT"``), and ``../shared/peers/postfix-relay.sh PORT
[127.0.0.1]:SINKPORT`` (Postfix with relayhost the sink and its default connection cache).
Both are started once; 100 unmeasured messages warm each up (Postfix spawns its daemons on
demand). Then ``--repeat`` interleaved rounds (the order alternates), and per server the
medians of: time to empty, delivered messages per second, when smtp-source had handed over
its last message ("all accepted after": how much of the time is receiving), CPU milliseconds
per delivered message (all the server's processes, receiving and delivering: see
delivery_common.py) and messages per sink connection; the largest memory figures seen (summed
PSS of its processes, largest peak RSS of one process); the ratio Mailwarden/Postfix of the
median rates (target: at least 2). A server whose sink counters stop moving for ``--stall``
seconds fails the run with what was seen; the other server is still measured, and the script
exits with status 1.

    python benchmarks/relay.py [--messages 5000] [--repeat 3] [--servers mailwarden,postfix]
                               [--sessions 8] [--size 10240] [--stall 30] [--json]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from delivery_common import (
    BenchmarkError,
    MailwardenNode,
    Measurement,
    PostfixRelay,
    Run,
    Server,
    Sink,
    describe_run,
    fail,
    finish_source,
    interleaved,
    report,
    smtp_source,
    stop_all,
)

RECIPIENT = "bench@relay.example"
WARMUP = 100


def relay_once(
    server: Server, sink: Sink, args: argparse.Namespace, messages: int, round_number: int
) -> Run:
    measurement = Measurement(server, sink)
    source = smtp_source(
        server.port,
        messages=messages,
        sessions=args.sessions,
        size=args.size,
        recipient=RECIPIENT,
    )

    def accepted() -> float | None:
        if source.poll() is None:
            return None
        return time.monotonic() - measurement.started

    try:
        run = measurement.wait_delivered(
            messages, stall=args.stall, round_number=round_number, while_waiting=accepted
        )
    finally:
        if source.poll() is None:
            source.kill()
    finish_source(source, server.name)
    left = server.confirm_empty()
    if left is not None:
        raise BenchmarkError(f"{server.name}: the sink has every message but {left}")
    return run


def start_server(name: str, sink: Sink, postfix_port: int) -> Server:
    if name == "mailwarden":
        return MailwardenNode(sink.port)
    if name == "postfix":
        return PostfixRelay(sink.port, port=postfix_port)
    raise BenchmarkError(f"unknown server {name!r} (mailwarden, postfix)")


def measure_all(args: argparse.Namespace, directory: Path, failures: dict[str, str]) -> list[Run]:
    sink = Sink(directory)
    servers: list[Server] = []
    try:
        for name in args.servers.split(","):
            servers.append(start_server(name, sink, args.postfix_port))
        for server in servers:
            try:
                relay_once(server, sink, args, WARMUP, 0)
            except BenchmarkError as error:
                fail(server, "warm-up", error, failures)

        def measure(server: Server, round_number: int) -> Run:
            return relay_once(server, sink, args, args.messages, round_number)

        return interleaved(servers, args.repeat, measure, failures)
    finally:
        stop_all(servers, failures)
        sink.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5000, help="smtp-source -m")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--sessions", type=int, default=8, help="smtp-source -s")
    parser.add_argument("--size", type=int, default=10240, help="smtp-source -l (payload bytes)")
    parser.add_argument("--servers", default="mailwarden,postfix", help="which, comma-separated")
    parser.add_argument("--postfix-port", type=int, default=2602)
    parser.add_argument(
        "--stall", type=float, default=30.0, help="seconds without delivery before giving up"
    )
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = parser.parse_args()

    failures: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as directory:
        try:
            runs = measure_all(args, Path(directory), failures)
        except BenchmarkError as error:
            raise SystemExit(str(error)) from None
    settings = describe_run(
        load=f"smtp-source -s {args.sessions} -l {args.size} -m {args.messages}",
        repeat=args.repeat,
        cpus=os.cpu_count(),
    )
    report("relay", runs, failures, as_json=args.json, settings=settings)
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
