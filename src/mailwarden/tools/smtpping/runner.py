"""Run the pings: -P worker tasks on one event loop, the rate ticker, the progress line.

Each worker behaves like one 1.1 process: it walks the address list until one
accepts a TCP connection, prints its own PING header and numbers its own pings,
and sends -c messages (so -P 4 -c 10 sends 40, as in 1.1). Stopping (Ctrl-C,
--duration) lets transactions in flight finish; a second Ctrl-C kills at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from . import report
from .fast import Step, fast_ping, plan_steps
from .options import Options
from .session import PingResult, SessionPlan, ping
from .stats import PHASES, RunStats


@dataclass(slots=True)
class WorkerOutcome:
    """Where a worker ended up: the address it pinged (None if none) and its last seq."""

    address: str | None = None
    seq: int = 0


@dataclass(slots=True)
class Target:
    address: str
    family: int
    sockaddr: tuple[object, ...]


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
    _wake: asyncio.Event | None = None
    _targets: dict[str, Target | None] = field(default_factory=dict)
    _fast_steps: tuple[Step, ...] | None = None

    def __post_init__(self) -> None:
        plan = self.plan
        # Plain SMTP takes the raw-socket state machine; TLS and AUTH the coroutine path.
        if not (plan.starttls or plan.implicit_tls or plan.auth):
            self._fast_steps = plan_steps(plan)

    def stop(self) -> None:
        self.stopping = True
        if self._wake is not None:
            self._wake.set()

    async def _target(self, address: str) -> Target | None:
        """getaddrinfo as 1.1 does it, once per address; None (after 1.1's error) if it fails."""
        if address in self._targets:
            return self._targets[address]
        loop = asyncio.get_running_loop()
        target: Target | None = None
        try:
            infos = await loop.getaddrinfo(address, self.options.port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as error:
            message = getattr(error, "strerror", None) or str(error)
            self.err.write(f"getaddrinfo() failed {address}: {message}\n")
        else:
            family, _, _, _, sockaddr = infos[0]
            target = Target(address, family, sockaddr)
        self._targets[address] = target
        return target

    def _family_allowed(self, family: int) -> bool:
        wanted = {4: socket.AF_INET, 6: socket.AF_INET6}.get(self.options.family)
        if wanted is not None and family != wanted:
            return False
        return self.bind_family is None or family == self.bind_family

    async def _pause(self, seconds: float) -> None:
        if seconds <= 0 or self._wake is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    def _record(self, result: PingResult) -> None:
        stats = self.stats
        phases = stats.phases
        if result.connect_ns is not None:
            phases["connect"].add(result.connect_ns)
        for name, mark in zip(PHASES[1:], result.marks, strict=False):
            phases[name].add(mark)
        if result.ok:
            stats.completed += 1
            self.completed_since_tick += 1
        else:
            stats.failed += 1
            stats.errors[report.error_key(result)] += 1

    async def worker(self, index: int) -> WorkerOutcome:
        options = self.options
        outcome = WorkerOutcome()
        seq = 0
        for address in self.addresses:
            target = await self._target(address)
            if target is None or not self._family_allowed(target.family):
                continue
            if not options.quiet and not options.json:
                self.out.write(
                    report.header_line(
                        options.recipient, address, options.port, self.announced_size
                    )
                )
            while not self.stopping and not (options.count and seq >= options.count):
                if seq > 0:
                    await self._pause(options.wait_ms / 1000)
                    if self.stopping:
                        break
                    seq += 1
                if self._fast_steps is not None:
                    result = await fast_ping(
                        target.sockaddr, target.family, self.plan, self._fast_steps
                    )
                else:
                    result = await ping(target.sockaddr, target.family, self.plan)
                connected = result.failure not in ("connect", "bind")
                if connected and seq == 0:
                    seq = 1
                self._record(result)
                if options.json:
                    self.out.write(report.ping_json(index, seq, address, options.port, result))
                elif result.ok:
                    if not options.quiet:
                        self.out.write(report.ping_line(seq, result))
                else:
                    self.err.write(report.error_line(seq, address, result))
                if seq == 0:
                    break  # never connected here: 1.1 moves on to the next address
            if seq > 0:
                outcome.address, outcome.seq = address, seq
                break
        return outcome

    async def _rate_ticker(self) -> None:
        """Print the messages completed in each second, starting with 0 as 1.1 does."""
        second = 0
        next_tick = time.monotonic()
        while True:
            count, self.completed_since_tick = self.completed_since_tick, 0
            if self.on_tick is not None:
                self.on_tick(count)
            elif self.options.json:
                self.out.write(report.rate_json(second, count))
            else:
                self.out.write(f"{count}\n")
            self.out.flush()
            second += 1
            next_tick += self.tick_interval
            await asyncio.sleep(max(0.0, next_tick - time.monotonic()))

    async def _progress(self) -> None:
        """Redraw one status line on the terminal every half second."""
        await asyncio.sleep(1.0)
        while True:
            stats = self.stats
            elapsed = time.monotonic() - self.started
            self.err.write(
                f"\r\x1b[K{stats.completed} sent, {stats.failed} failed, "
                f"{stats.completed / elapsed:.0f} msg/s, {elapsed:.0f} s"
            )
            self.err.flush()
            await asyncio.sleep(0.5)

    def _wants_progress(self) -> bool:
        options = self.options
        silent = (options.quiet and not options.rate) or (options.json and not self.out.isatty())
        return options.progress and silent and self.on_tick is None and self.err.isatty()

    async def run(self, worker_indexes: range | list[int] | None = None) -> list[WorkerOutcome]:
        """Run every worker to the end; returns their outcomes in worker order."""
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self.started = time.monotonic()
        self._install_sigint(loop)
        if self.options.duration_s:
            loop.call_later(self.options.duration_s, self.stop)
        helpers = []
        if self.options.rate or self.on_tick is not None:
            helpers.append(asyncio.create_task(self._rate_ticker()))
        progress = self._wants_progress()
        if progress:
            helpers.append(asyncio.create_task(self._progress()))
        indexes = worker_indexes if worker_indexes is not None else range(self.options.workers)
        try:
            outcomes = await asyncio.gather(*(self.worker(index) for index in indexes))
        finally:
            for helper in helpers:
                helper.cancel()
            if progress:
                self.err.write("\r\x1b[K")
            if self.on_tick is not None:
                self.on_tick(self.completed_since_tick)
        return list(outcomes)

    def _install_sigint(self, loop: asyncio.AbstractEventLoop) -> None:
        stop_signal = self.stop_signal

        def first_interrupt() -> None:
            # Like 1.1: the first Ctrl-C ends the run gracefully, the next one kills.
            loop.remove_signal_handler(stop_signal)
            if stop_signal == signal.SIGINT:
                signal.signal(signal.SIGINT, signal.SIG_DFL)
            self.stop()

        # Only the main thread may own signals; elsewhere Ctrl-C is left alone.
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(stop_signal, first_interrupt)

    def elapsed(self) -> float:
        return time.monotonic() - self.started
