"""One run of smtpping: its options and plan, what it counts and what it prints.

The pinging itself is done by one of two drivers, chosen by ``execute``: the epoll
engine (``engine.py``) for plain SMTP, and asyncio (``coroutines.py``) when the
run needs TLS or AUTH. Both walk the same workers (``worker.py``), keep time with
the same ``Timekeeper`` (``timekeeper.py``: ticks, progress line, --duration, -w,
the stop signal) and report through the methods here, so their output is the
same. Stopping (Ctrl-C, --duration) lets transactions in flight finish; a second
Ctrl-C kills at once. The drivers see the run only as a ``worker.RunView``: the
runner imports them, never the other way round.
"""

from __future__ import annotations

import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from time import monotonic
from typing import TextIO

from . import report
from .options import Options
from .result import PingResult, SessionPlan
from .stats import PHASES, RunStats
from .timekeeper import Timekeeper
from .worker import Target, WorkerOutcome

__all__ = ["Run", "Target", "WorkerOutcome"]


@dataclass
class Run:
    options: Options
    plan: SessionPlan
    addresses: list[str]
    announced_size: int
    bind_family: int | None = None
    out: TextIO = sys.stdout
    err: TextIO = sys.stderr
    stats: RunStats = field(default_factory=RunStats)
    started: float = 0.0  # when the pinging began, for the summary's elapsed time
    keeps_phases: bool = field(init=False)
    _targets: dict[str, Target | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        options = self.options
        # Only 1.1's statistics block, percentiles and JSON print phase timings;
        # a run that prints none skips timing them (eight samples a ping).
        self.keeps_phases = options.parallel <= 1 or options.percentiles or options.json

    def timekeeper(
        self,
        *,
        tick_sink: Callable[[int], None] | None = None,
        tick_interval: float = 1.0,
        stop_signal: int = signal.SIGINT,
    ) -> Timekeeper:
        """The clock for this run; a --processes child passes where its ticks go."""
        options = self.options
        return Timekeeper(
            self.stats,
            out=self.out,
            err=self.err,
            ticks=options.rate,
            tick_interval=tick_interval,
            tick_sink=tick_sink,
            json=options.json,
            progress=self._wants_progress(tick_sink is None),
            duration_s=options.duration_s,
            stop_signal=stop_signal,
        )

    def _wants_progress(self, alone: bool) -> bool:
        """A live line on a terminal, only when nothing else is printed a ping at a time."""
        options = self.options
        silent = (options.quiet and not options.rate) or (options.json and not self.out.isatty())
        return options.progress and silent and alone and self.err.isatty()

    def execute(
        self, indexes: range | list[int] | None = None, clock: Timekeeper | None = None
    ) -> list[WorkerOutcome]:
        """Run every worker (or those given) to the end; outcomes in worker order."""
        workers = indexes if indexes is not None else range(self.options.workers)
        if clock is None:
            clock = self.timekeeper()
        self.started = monotonic()
        try:
            if self.plan.plain:
                from .engine import run_plain

                return run_plain(self, workers, clock)
            from .coroutines import run_async, run_workers

            return run_async(run_workers(self, workers, clock))
        finally:
            self.started = clock.started or self.started

    def target(self, address: str) -> Target | None:
        """getaddrinfo as 1.1 does it, once per address; None after 1.1's error line, or
        when -4, -6 or -b rule the address family out."""
        if address not in self._targets:
            target: Target | None = None
            try:
                infos = socket.getaddrinfo(address, self.options.port, type=socket.SOCK_STREAM)
            except (socket.gaierror, UnicodeError) as error:
                message = getattr(error, "strerror", None) or str(error)
                self.err.write(f"getaddrinfo() failed {address}: {message}\n")
            else:
                family, _, _, _, sockaddr = infos[0]
                target = Target(address, family, sockaddr)
            self._targets[address] = target
        target = self._targets[address]
        if target is None or not self._family_allowed(target.family):
            return None
        return target

    def _family_allowed(self, family: int) -> bool:
        wanted = {4: socket.AF_INET, 6: socket.AF_INET6}.get(self.options.family)
        if wanted is not None and family != wanted:
            return False
        return self.bind_family is None or family == self.bind_family

    def announce(self, address: str) -> None:
        """The PING header a worker prints when it starts on an address."""
        options = self.options
        if not options.quiet and not options.json:
            self.out.write(
                report.header_line(options.recipient, address, options.port, self.announced_size)
            )

    def report(self, worker: int, seq: int, address: str, result: PingResult) -> None:
        """Count one ping and print its line (stdout) or its error (stderr)."""
        stats = self.stats
        if self.keeps_phases:
            phases = stats.phases
            if result.connect_ns is not None:
                phases["connect"].add(result.connect_ns)
            for name, mark in zip(PHASES[1:], result.marks, strict=False):
                phases[name].add(mark)
        options = self.options
        if result.failure is None:
            stats.completed += 1
            if options.json:
                self.out.write(report.ping_json(worker, seq, address, options.port, result))
            elif not options.quiet:
                self.out.write(report.ping_line(seq, result))
            return
        stats.failed += 1
        stats.errors[report.error_key(result)] += 1
        if options.json:
            self.out.write(report.ping_json(worker, seq, address, options.port, result))
        else:
            self.err.write(report.error_line(seq, address, result))

    def elapsed(self) -> float:
        return monotonic() - self.started
