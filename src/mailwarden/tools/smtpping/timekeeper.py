"""The clock of one run, the same for both drivers: timers, -w pauses, the stop, the live lines.

A ``Timekeeper`` owns every time-driven part of a run: the -r ticker (1.1 prints
the count of each second), the progress line, the --duration end, the workers'
-w pauses, the driver's own timers (the epoll engine's reply-timeout sweep) and
the stop (a first Ctrl-C, or SIGUSR1 in a --processes child, ends the run gently;
the next acts as if uncaught, as in 1.1). It never waits and owns no event loop:
a driver sleeps until ``deadline``, then calls ``run_due``, which fires what is
due and hands back the pause items (whatever the driver parked) whose wait is
over. ``stop`` moves the deadline to "now", so the next turn of the driver's loop
releases every pause at once. Each driver only adapts this to its loop: the epoll
engine passes ``deadline`` to ``epoll_wait``, the asyncio driver keeps one timer
handle on it.
"""

from __future__ import annotations

import heapq
import math
import signal
from collections.abc import Callable
from itertools import count
from time import monotonic
from typing import Any, TextIO

from .report import rate_json
from .stats import RunStats

PROGRESS_DELAY_S = 1.0  # a run shorter than this never draws the line
PROGRESS_INTERVAL_S = 0.5


class Timekeeper:
    """Timers, pauses and the stop flag of one run; see the module docstring."""

    __slots__ = (
        "_order",
        "_pauses",
        "_second",
        "_ticked",
        "_timers",
        "deadline",
        "duration_s",
        "err",
        "json",
        "out",
        "progress",
        "started",
        "stats",
        "stop_signal",
        "stopping",
        "tick_interval",
        "tick_sink",
        "ticks",
    )

    def __init__(
        self,
        stats: RunStats,
        *,
        out: TextIO,
        err: TextIO,
        ticks: bool = False,
        tick_interval: float = 1.0,
        tick_sink: Callable[[int], None] | None = None,
        json: bool = False,
        progress: bool = False,
        duration_s: float = 0.0,
        stop_signal: int = signal.SIGINT,
    ) -> None:
        self.stats = stats
        self.out = out
        self.err = err
        # -r prints a count a second; a --processes child sends its counts to the parent.
        self.ticks = ticks or tick_sink is not None
        self.tick_interval = tick_interval
        self.tick_sink = tick_sink
        self.json = json
        self.progress = progress
        self.duration_s = duration_s
        self.stop_signal = stop_signal
        self.stopping = False
        self.started = 0.0
        self.deadline = math.inf  # of the next timer or pause; -inf once stopping
        self._timers: list[tuple[float, int, Callable[[], None]]] = []  # a heap
        self._pauses: list[tuple[float, int, Any]] = []  # a heap
        self._order = count()  # ties in a heap never compare callbacks or items
        self._ticked = 0  # stats.completed at the last tick
        self._second = 0

    # -- start and end -------------------------------------------------------------

    def begin(self) -> None:
        """The run starts now: 1.1 prints the count of second 0 at once."""
        started = self.started = monotonic()
        if self.ticks:
            self.tick()
            self.every(started + self.tick_interval, self.tick_interval, self.tick)
        if self.progress:
            self.every(started + PROGRESS_DELAY_S, PROGRESS_INTERVAL_S, self.draw_progress)
        if self.duration_s:
            self.at(started + self.duration_s, self.stop)

    def end(self) -> None:
        """After the last ping: erase the progress line, hand over the last partial tick."""
        if self.progress:
            self.err.write("\r\x1b[K")
        if self.tick_sink is not None:
            self.tick_sink(self.stats.completed - self._ticked)

    def elapsed(self) -> float:
        return monotonic() - self.started

    # -- the stop ------------------------------------------------------------------

    def stop(self) -> None:
        """Let the pings in flight finish and start no new one; wake every -w pause."""
        self.stopping = True
        self.deadline = -math.inf

    def signalled(self) -> None:
        """The first stop signal: stop gently, and let the next one act as if uncaught."""
        signal.signal(self.stop_signal, signal.SIG_DFL)
        self.stop()

    # -- timers and pauses -----------------------------------------------------------

    def at(self, when: float, callback: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (when, next(self._order), callback))
        if when < self.deadline:
            self.deadline = when

    def every(self, first: float, interval: float, callback: Callable[[], None]) -> None:
        """Call ``callback`` at ``first`` and every ``interval`` after, without drifting."""

        def fire(when: float = first) -> None:
            callback()
            self.at(when + interval, lambda: fire(when + interval))

        self.at(first, fire)

    def pause(self, seconds: float, item: Any) -> None:
        """Park ``item`` (a worker, a future) until ``seconds`` from now, or the stop."""
        when = monotonic() + seconds
        heapq.heappush(self._pauses, (when, next(self._order), item))
        if when < self.deadline:
            self.deadline = when

    def run_due(self, now: float) -> list[Any]:
        """Fire the timers due at ``now``; the parked items whose pause is over."""
        timers = self._timers
        while timers and timers[0][0] <= now:
            heapq.heappop(timers)[2]()
        pauses = self._pauses
        if self.stopping:  # -w is between pings, and no ping follows a stop
            woken = [item for _, _, item in pauses]
            pauses.clear()
        else:
            woken = []
            while pauses and pauses[0][0] <= now:
                woken.append(heapq.heappop(pauses)[2])
        deadline = timers[0][0] if timers else math.inf
        if pauses and pauses[0][0] < deadline:
            deadline = pauses[0][0]
        self.deadline = deadline
        if self.stopping and pauses:
            # A stop signal's handler ran between the check above and here.
            self.deadline = -math.inf
        return woken

    # -- what the timers print ---------------------------------------------------------

    def tick(self) -> None:
        """Print the messages completed since the last tick (-r), or hand them over."""
        completed = self.stats.completed
        count_, self._ticked = completed - self._ticked, completed
        if self.tick_sink is not None:
            self.tick_sink(count_)
        elif self.json:
            self.out.write(rate_json(self._second, count_))
        else:
            self.out.write(f"{count_}\n")
        self.out.flush()
        self._second += 1

    def draw_progress(self) -> None:
        stats = self.stats
        elapsed = self.elapsed()
        self.err.write(
            f"\r\x1b[K{stats.completed} sent, {stats.failed} failed, "
            f"{stats.completed / elapsed:.0f} msg/s, {elapsed:.0f} s"
        )
        self.err.flush()
