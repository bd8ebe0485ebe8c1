"""--processes N: spread the -P workers over N forked processes.

Worker i runs in process i % N, so seq numbers and PING headers are exactly those
of a one-process run. Children print their own ping lines (line-buffered, so lines
never interleave) and send the parent completion counts ten times a second and,
at the end, their statistics. The parent prints the -r line each second, merges
the statistics and reports. Ctrl-C (or --duration) in the parent tells the children
to finish their transactions in flight (SIGUSR1); a second Ctrl-C kills them.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
from multiprocessing.connection import Connection, wait

from .runner import Run, WorkerOutcome


def _child(run: Run, indexes: list[int], channel: Connection) -> None:
    """Body of one child: run its workers, report, and leave without cleanup handlers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[attr-defined]
    clock = run.timekeeper(
        tick_sink=lambda count: channel.send(("tick", count)),
        tick_interval=0.1,
        stop_signal=signal.SIGUSR1,
    )
    # A stop that comes before the run has installed its own handler still counts.
    signal.signal(signal.SIGUSR1, lambda signum, frame: clock.stop())
    try:
        outcomes = run.execute(indexes, clock)
        # The run is over and its handler gone: a late stop request must not kill us.
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        channel.send(("done", run.stats, list(zip(indexes, outcomes, strict=True))))
    finally:
        sys.stdout.flush()
        channel.close()
        os._exit(0)


def run_in_processes(run: Run) -> list[WorkerOutcome]:
    """Run every worker of ``run`` across child processes; return outcomes in worker order.

    Must be called with no event loop running (children are forked). A child that
    dies without reporting contributes no statistics and its workers count as
    never having connected.
    """
    options = run.options
    count = min(options.processes, options.workers)
    context = multiprocessing.get_context("fork")
    channels: dict[Connection, multiprocessing.process.BaseProcess] = {}
    sys.stdout.flush()
    for child_index in range(count):
        receiver, sender = context.Pipe(duplex=False)
        indexes = list(range(child_index, options.workers, count))
        process = context.Process(target=_child, args=(run, indexes, sender), daemon=True)
        process.start()
        sender.close()
        channels[receiver] = process

    interrupts = 0

    def on_interrupt(signum: int, frame: object) -> None:
        nonlocal interrupts
        interrupts += 1
        for process in channels.values():
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signal.SIGKILL if interrupts > 1 else signal.SIGUSR1)
        if interrupts > 1:
            os._exit(130)

    previous = signal.signal(signal.SIGINT, on_interrupt)
    run.started = time.monotonic()
    deadline = run.started + options.duration_s if options.duration_s else None
    outcomes: dict[int, WorkerOutcome] = {}
    pending = dict(channels)
    tick_total = 0
    second = 0
    next_print = run.started
    try:
        while pending:
            now = time.monotonic()
            if options.rate and now >= next_print:
                print(tick_total, flush=True)
                tick_total = 0
                second += 1
                next_print = run.started + second
            if deadline is not None and now >= deadline and interrupts == 0:
                on_interrupt(signal.SIGINT, None)
            timeout = max(0.0, min(next_print - now, 0.2)) if options.rate else 0.2
            for channel in wait(list(pending), timeout):
                try:
                    kind, *body = channel.recv()  # type: ignore[union-attr]
                except EOFError:
                    pending.pop(channel).join()  # type: ignore[call-overload]
                    continue
                if kind == "tick":
                    tick_total += body[0]
                else:
                    child_stats, child_outcomes = body
                    run.stats.merge(child_stats)
                    outcomes.update(child_outcomes)
    finally:
        signal.signal(signal.SIGINT, previous)
    return [outcomes.get(index, WorkerOutcome()) for index in range(options.workers)]
