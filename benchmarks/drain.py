"""Queue drain: Mailwarden against Postfix, in one run, emptying a queue filled while held.

The queue: 20,000 messages (``--messages``) of 10 KiB payload, one recipient each, spread
evenly over 10 recipient domains d0.example .. d9.example (``--domains``), sent by Postfix's
``smtp-source`` (one process per domain, 2 sessions each, connections reused: the fill is not
measured). Delivery is held while the queue fills, the same way on both servers: every message
goes straight into the hold queue as it is accepted, and the benchmark releases them all at once.

- Postfix (``../shared/peers/postfix-relay.sh PORT [127.0.0.1]:SINKPORT``, relayhost the sink):
  ``smtpd_data_restrictions = check_client_access static:HOLD`` (access(5) HOLD: cleanup writes
  each message into the hold queue), set before Postfix starts so that every smtpd has it, and
  kept for the whole run (nothing arrives while the queue drains); main.cf gets Postfix's
  default back at the end. Release: ``postsuper -H ALL`` (hold -> deferred queue), then
  ``postqueue -f`` (deliver the deferred queue now).
- Mailwarden (a default ``mailwarden run`` of this checkout with one ``[[routes]]`` entry
  ``domains = ["*"]``, ``next_hop = "[127.0.0.1]:SINKPORT"``): a policy script whose ``data``
  hook returns ``Hold(...)`` (the message is spooled with every recipient held). Release:
  ``mailwarden queue update release --all --yes`` (``--mailwarden-release`` to change it).

Measured, after a 2 s pause on both for the fill's work to settle: from the start of the
release command(s) until all messages are at the sink (its own ``-c`` counters) and the
server's queue is empty (Mailwarden: no non-final recipient in any spool shard; Postfix: no
file in maildrop, incoming, active, deferred, hold), polled every 50 ms, then confirmed with
``mailwarden queue list --json`` / ``postqueue -j`` (not timed). The fill is checked before the
release: every message held, none at the sink. Per server, the medians over ``--repeat``
interleaved rounds (the order alternates) of: time to empty, delivered messages per second,
CPU milliseconds per delivered message (the server's processes plus the release commands: see
delivery_common.py), messages per sink connection; the largest memory figures seen; the ratio
Mailwarden/Postfix of the median rates (target: at least 2). A server whose sink counters stop
moving for ``--stall`` seconds fails with what was seen; the other is still measured, and the
script exits with status 1.

    python benchmarks/drain.py [--messages 20000] [--domains 10] [--repeat 3]
                               [--servers mailwarden,postfix] [--stall 30] [--json]
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
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
    finish_source,
    interleaved,
    log,
    report,
    smtp_source,
    stop_all,
    wait_until,
)

HOLD_POLICY = '''\
"""Drain benchmark: hold every message at the end of DATA, until the benchmark releases it."""

from mailwarden.policy.actions import Hold


async def data(conn, tx, message):
    return Hold("drain benchmark: held until released")
'''
POSTFIX_HOLD = "smtpd_data_restrictions = check_client_access static:HOLD"
POSTFIX_NO_HOLD = "smtpd_data_restrictions ="
FILL_SESSIONS = 2  # per domain
SETTLE = 2.0  # seconds between the fill and the release, for the fill's work to settle


def held(server: Server) -> int:
    if isinstance(server, MailwardenNode):
        return server.held()
    if isinstance(server, PostfixRelay):
        return server.count("hold")
    raise TypeError(server)


def fill(server: Server, sink: Sink, args: argparse.Namespace) -> None:
    """Queue ``args.messages`` held messages for ``args.domains`` domains; checks that every
    one of them is held and none was delivered."""
    delivered_before = sink.count().messages
    share, extra = divmod(args.messages, args.domains)
    sources = [
        smtp_source(
            server.port,
            messages=share + (domain < extra),
            sessions=FILL_SESSIONS,
            size=args.size,
            recipient=f"bench@d{domain}.example",
            reuse=True,
        )
        for domain in range(args.domains)
    ]
    for source in sources:
        finish_source(source, server.name)
    try:
        wait_until(
            lambda: held(server) == server.pending() == args.messages,
            lambda: (
                f"{server.name}: {held(server)} of {args.messages} held, {server.pending()} queued"
            ),
            args.stall,
        )
    except BenchmarkError as error:
        raise BenchmarkError(f"filling the queue: {error}") from None
    if sink.count().messages != delivered_before:
        raise BenchmarkError(f"{server.name}: delivered while held")


def release(server: Server, args: argparse.Namespace) -> None:
    if isinstance(server, MailwardenNode):
        commands = [[sys.executable, "-m", "mailwarden.cli.main", *args.mailwarden_release]]
        commands[0] += ["--config", str(server.config)]
        env = server.env
    else:
        commands, env = [["postsuper", "-H", "ALL"], ["postqueue", "-f"]], None
    for command in commands:
        done = subprocess.run(
            command, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True
        )
        if done.returncode != 0:
            output = (done.stderr or done.stdout).strip()
            raise BenchmarkError(f"{server.name}: {shlex.join(command)} failed: {output}")


def drain_once(server: Server, sink: Sink, args: argparse.Namespace, round_number: int) -> Run:
    started = time.monotonic()
    fill(server, sink, args)
    log(
        f"round {round_number} {server.name}: {args.messages} held messages queued in "
        f"{time.monotonic() - started:.1f} s (not measured)"
    )
    time.sleep(SETTLE)
    measurement = Measurement(server, sink)
    release(server, args)
    run = measurement.wait_delivered(args.messages, stall=args.stall, round_number=round_number)
    left = server.confirm_empty()
    if left is not None:
        raise BenchmarkError(f"{server.name}: the sink has every message but {left}")
    return run


def start_server(name: str, sink: Sink, postfix_port: int) -> Server:
    if name == "mailwarden":
        return MailwardenNode(sink.port, script=HOLD_POLICY)
    if name == "postfix":
        return PostfixRelay(sink.port, port=postfix_port, settings=(POSTFIX_HOLD,))
    raise BenchmarkError(f"unknown server {name!r} (mailwarden, postfix)")


def measure_all(args: argparse.Namespace, directory: Path, failures: dict[str, str]) -> list[Run]:
    sink = Sink(directory)
    servers: list[Server] = []
    try:
        for name in args.servers.split(","):
            servers.append(start_server(name, sink, args.postfix_port))

        def measure(server: Server, round_number: int) -> Run:
            return drain_once(server, sink, args, round_number)

        return interleaved(servers, args.repeat, measure, failures)
    finally:
        for server in servers:
            if isinstance(server, PostfixRelay):
                # main.cf outlives this run: leave no hold in it for the next user of the peer
                subprocess.run(["postconf", "-e", POSTFIX_NO_HOLD], check=False)
        stop_all(servers, failures)
        sink.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20000, help="messages in the queue")
    parser.add_argument("--domains", type=int, default=10, help="recipient domains")
    parser.add_argument("--size", type=int, default=10240, help="payload bytes per message")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--servers", default="mailwarden,postfix", help="which, comma-separated")
    parser.add_argument("--postfix-port", type=int, default=2602)
    parser.add_argument(
        "--mailwarden-release",
        type=shlex.split,
        default="queue update release --all --yes",
        help="the mailwarden CLI arguments that release every held message (%(default)s)",
    )
    parser.add_argument(
        "--stall", type=float, default=30.0, help="seconds without progress before giving up"
    )
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = parser.parse_args()

    failures: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="drain-bench-") as directory:
        try:
            runs = measure_all(args, Path(directory), failures)
        except BenchmarkError as error:
            raise SystemExit(str(error)) from None
    settings = describe_run(
        queue=f"{args.messages} messages of {args.size} bytes for {args.domains} domains",
        repeat=args.repeat,
        cpus=os.cpu_count(),
    )
    report("drain", runs, failures, as_json=args.json, settings=settings)
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
