"""``smtpping`` entry point: parse, resolve, run, report, exit as 1.1 does.

Exit codes: 0 after a run (even one where every ping failed, as in 1.1),
1 when the run cannot start (-r without -P, bad -b address, unusable TLS files),
2 for bad usage (usage text on stderr), 130 for a second Ctrl-C.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from . import report
from .message import build_payload
from .options import USAGE, VERSION, HelpRequested, Options, UsageError, VersionRequested
from .options import parse_args as parse_options
from .plan import SetupError, build_plan, resolve_bind
from .resolve import resolve_targets
from .runner import Run, WorkerOutcome


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed, else asyncio's default."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return None
    return uvloop.new_event_loop


def run_async(coroutine: Coroutine[Any, Any, Any]) -> Any:
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(coroutine)


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


async def prepare(options: Options) -> Run | int:
    """Build the message, resolve the targets and the plan; an exit code if that fails."""
    payload = build_payload(
        sender=options.sender,
        recipient=options.recipient,
        size_kib=options.size_kib,
        file=options.file,
        chunking=options.chunking,
    )
    addresses = await resolve_targets(options.recipient, options.server, debug=options.debug)
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


def execute(options: Options) -> int:
    prepared = run_async(prepare(options))
    if isinstance(prepared, int):
        return prepared
    run = prepared
    if options.processes > 1 and options.workers > 1:
        from .processes import run_in_processes

        # Forked children must not inherit a running event loop: fork from plain code.
        outcomes = run_in_processes(run)
    else:
        outcomes = run_async(run.run())
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
