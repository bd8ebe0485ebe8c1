"""One run of smtpping: its options and plan, what it counts and what it prints.

The pinging itself is done by one of two drivers, chosen by ``execute``: the epoll
engine (``engine.py``) for plain SMTP, and asyncio (``coroutines.py``) when the
run needs TLS or AUTH. Both walk the same workers (``worker.py``) and report
through the methods here, so their output is the same. Stopping (Ctrl-C,
--duration) lets transactions in flight finish; a second Ctrl-C kills at once.
"""

from __future__ import annotations

import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from . import report
from .options import Options
from .result import PingResult, SessionPlan
from .stats import PHASES, RunStats
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
    completed_since_tick: int = 0
    stopping: bool = False
    started: float = 0.0
    on_tick: Callable[[int], None] | None = None  # multi-process children report here
    tick_interval: float = 1.0
    stop_signal: int = signal.SIGINT
    on_stop: Callable[[], None] | None = None  # the driver's way to end -w pauses early
    keeps_phases: bool = field(init=False)
    _second: int = 0
    _targets: dict[str, Target | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        options = self.options
        # Only 1.1's statistics block, percentiles and JSON print phase timings;
        # a run that prints none skips timing them (eight samples a ping).
        self.keeps_phases = options.parallel <= 1 or options.percentiles or options.json

    @property
    def ticks(self) -> bool:
        return self.options.rate or self.on_tick is not None

    def execute(self, indexes: range | list[int] | None = None) -> list[WorkerOutcome]:
        """Run every worker (or those given) to the end; outcomes in worker order."""
        workers = indexes if indexes is not None else range(self.options.workers)
        if self.plan.plain:
            from .engine import run_plain

            return run_plain(self, workers)
        from .coroutines import run_async, run_workers

        return run_async(run_workers(self, workers))

    def stop(self) -> None:
        self.stopping = True
        if self.on_stop is not None:
            self.on_stop()

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
            self.completed_since_tick += 1
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

    def tick(self) -> None:
        """Print the messages completed since the last tick (-r), or hand them to the parent."""
        count, self.completed_since_tick = self.completed_since_tick, 0
        if self.on_tick is not None:
            self.on_tick(count)
        elif self.options.json:
            self.out.write(report.rate_json(self._second, count))
        else:
            self.out.write(f"{count}\n")
        self.out.flush()
        self._second += 1

    def wants_progress(self) -> bool:
        """A live line on a terminal, only when nothing else is printed a ping at a time."""
        options = self.options
        silent = (options.quiet and not options.rate) or (options.json and not self.out.isatty())
        return options.progress and silent and self.on_tick is None and self.err.isatty()

    def draw_progress(self) -> None:
        stats = self.stats
        elapsed = self.elapsed()
        self.err.write(
            f"\r\x1b[K{stats.completed} sent, {stats.failed} failed, "
            f"{stats.completed / elapsed:.0f} msg/s, {elapsed:.0f} s"
        )
        self.err.flush()

    def finish_helpers(self) -> None:
        """After the last ping: erase the progress line, report the last partial tick."""
        if self.wants_progress():
            self.err.write("\r\x1b[K")
        if self.on_tick is not None:
            self.on_tick(self.completed_since_tick)

    def elapsed(self) -> float:
        return time.monotonic() - self.started
