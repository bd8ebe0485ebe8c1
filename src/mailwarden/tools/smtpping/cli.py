"""``smtpping`` entry point: parse, resolve, run, report, exit as 1.1 does.

Exit codes: 0 after a run (even one where every ping failed, as in 1.1),
1 when the run cannot start (-r without -P, bad -b address, unusable TLS files),
2 for bad usage (usage text on stderr), 130 for a second Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

from . import report
from .message import build_payload
from .options import USAGE, VERSION, HelpRequested, Options, UsageError, VersionRequested
from .options import parse_args as parse_options
from .plan import SetupError, build_plan, resolve_bind
from .resolve import is_ip_literal
from .runner import Run, WorkerOutcome


def finish(run: Run, outcomes: list[WorkerOutcome], out: Any) -> None:
    """Print what 1.1 prints after the pings, plus the Mailwarden extras asked for."""
    options = run.options
    stats = run.stats
    transmitted = sum(outcome.seq for outcome in outcomes)
    stats.transmitted = transmitted
    first = next((outcome.address for outcome in outcomes if outcome.address), None)
    elapsed = run.elapsed()
    if options.json:
        out.write(report.summary_json(first, transmitted, stats, elapsed))
        return
    # 1.1 prints the block only for a single worker; -P N workers print none.
    if options.parallel <= 1 or options.percentiles:
        if first is not None and transmitted > 0:
            out.write(report.statistics_block(first, transmitted, stats))
            if options.percentiles:
                out.write(report.percentile_block(stats))
        elif options.parallel <= 1:
            out.write(report.NO_PINGS)
    if options.rate:
        out.write(report.rate_summary(stats, elapsed))


def target_addresses(options: Options) -> list[str]:
    """The addresses to try; DNS (and the event loop it runs on) only when needed."""
    if options.server is not None and is_ip_literal(options.server):
        return [options.server]
    from .coroutines import run_async
    from .resolve import resolve_targets

    return run_async(resolve_targets(options.recipient, options.server, debug=options.debug))


def prepare(options: Options) -> Run | int:
    """Build the message, resolve the targets and the plan; an exit code if that fails."""
    payload = build_payload(
        sender=options.sender,
        recipient=options.recipient,
        size_kib=options.size_kib,
        file=options.file,
        chunking=options.chunking,
    )
    addresses = target_addresses(options)
    if options.rate and options.parallel < 1:
        print("-r only works with -P1 or greater", file=sys.stderr)
        return 1
    try:
        bind = resolve_bind(options.bind)
        plan = build_plan(options, payload, bind)
    except SetupError as error:
        print(error, file=sys.stderr)
        return 1
    return Run(
        options,
        plan,
        addresses,
        payload.announced_size,
        bind_family=bind[0] if bind else None,
    )


def use_batch_scheduling() -> None:
    """Ask Linux to schedule this process as SCHED_BATCH (sched(7)).

    A woken batch task does not preempt the task running on its CPU. When the
    meter shares the machine with the server it measures, a reply then waits for
    the server's process to block instead of interrupting it, and the meter finds
    several replies per wake-up: fewer context switches for both, and the server
    keeps the CPU it would have lost to the meter. Per-ping timings can include
    that wait, which is why only -r (which prints none) uses it by default.
    Nothing happens where the policy does not exist.
    """
    policy = getattr(os, "SCHED_BATCH", None)
    if policy is not None:
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, policy, os.sched_param(0))


def allow_descriptors_for(workers: int) -> None:
    """Raise the soft limit on open files to what -P needs, up to the hard limit.

    Each worker holds one socket; many systems start processes with a soft limit
    of 1024 and a far higher hard one, and -P 5000 should not fail on the first.
    """
    import resource

    needed = workers + 64  # the interpreter's own files, epoll, pipes to children
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        wanted = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def execute(options: Options) -> int:
    prepared = prepare(options)
    if isinstance(prepared, int):
        return prepared
    run = prepared
    # Both before --processes forks: the children inherit them.
    allow_descriptors_for(options.workers)
    if options.batch_scheduling:
        use_batch_scheduling()
    if options.processes > 1 and options.workers > 1:
        from .processes import run_in_processes

        outcomes = run_in_processes(run)
    else:
        outcomes = run.execute()
    finish(run, outcomes, sys.stdout)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run smtpping with argv (default sys.argv[1:]) and return its exit code."""
    arguments = sys.argv[1:] if argv is None else argv
    try:
        options = parse_options(arguments)
    except HelpRequested:
        sys.stdout.write(USAGE)
        return 0
    except VersionRequested:
        print(VERSION)
        return 0
    except UsageError:
        sys.stderr.write(USAGE)
        return 2
    try:
        return execute(options)
    except BrokenPipeError:  # e.g. piped into head: stop quietly
        return 0
    finally:
        sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
