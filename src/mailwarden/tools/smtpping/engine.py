"""The event loop of plain runs: one epoll set, timers and signals, no asyncio.

Every socket of the run sits in one edge-triggered epoll set. One ``epoll_wait``
drains every ready socket, each reply answered straight from the read
(``plain.py``); a ping that ends hands its result to its worker, whose next ping
starts in the same turn of the loop. The rate ticker, the progress line, the
--duration stop, -w pauses and reply timeouts are timers on the same loop, and
a stop signal (Ctrl-C, or SIGUSR1 in a --processes child) reaches it through
``signal.set_wakeup_fd``. Runs with TLS or AUTH take the asyncio driver
(``coroutines.py``) instead.
"""

from __future__ import annotations

import contextlib
import heapq
import math
import select
import signal
import socket
from collections.abc import Callable
from itertools import count
from time import monotonic, perf_counter_ns
from typing import TYPE_CHECKING

from .plain import PlainTransaction, plan_steps
from .result import TIMEOUT_CODE
from .worker import WorkerCursor, WorkerOutcome

if TYPE_CHECKING:
    from .runner import Run

SWEEP_INTERVAL_S = 0.25
PROGRESS_DELAY_S = 1.0
PROGRESS_INTERVAL_S = 0.5


class Engine:
    """Runs the workers of one plain run to the end."""

    def __init__(self, run: Run, indexes: range | list[int]) -> None:
        self.run = run
        self.epoll = select.epoll()
        self.transactions: dict[int, PlainTransaction] = {}
        self.cursors = [WorkerCursor(run, index) for index in indexes]
        self._steps = plan_steps(run.plan)
        self._ready: list[WorkerCursor] = []  # workers whose next ping starts this turn
        self._pauses: list[tuple[float, int, WorkerCursor]] = []  # -w, a heap
        self._timers: list[tuple[float, int, Callable[[], None]]] = []  # a heap
        self._order = count()
        self._running = 0
        self._timeout_ns = int(run.plan.timeout_s * 1e9)
        self._wakeup: socket.socket | None = None
        self._deadline = math.inf  # of the next timer or -w pause
        self._debug = run.plan.debug
        self._bind = run.plan.bind_address

    # -- what transactions call -------------------------------------------------

    def watch(self, fd: int, transaction: PlainTransaction, mask: int) -> None:
        self.transactions[fd] = transaction
        self.epoll.register(fd, mask)

    def rewatch(self, fd: int, mask: int) -> None:
        self.epoll.modify(fd, mask)

    def finished(self, transaction: PlainTransaction) -> None:
        self.transactions.pop(transaction.fd, None)
        cursor = transaction.owner
        pause = cursor.ping_done(transaction.result)
        if pause > 0:
            heapq.heappush(self._pauses, (monotonic() + pause, next(self._order), cursor))
            self._update_deadline()
        else:
            # Started by the loop, not from here: a ping that fails at once (a
            # refused connect) must not recurse into the next one.
            self._ready.append(cursor)

    # -- the loop ----------------------------------------------------------------

    def run_to_end(self) -> list[WorkerOutcome]:
        run = self.run
        run.started = monotonic()
        run.on_stop = self._wake_pauses
        self._schedule_helpers()
        self._ready.extend(self.cursors)
        self._running = len(self.cursors)
        restore = self._catch_stop_signal()
        try:
            self._loop()
        finally:
            restore()
            self.epoll.close()
            run.on_stop = None
            run.finish_helpers()
        return [cursor.outcome for cursor in self.cursors]

    def _loop(self) -> None:
        poll = self.epoll.poll
        transactions = self.transactions
        ready = self._ready
        now = monotonic()
        while self._running:
            # ``now`` is from before the last turn's work: the wait ends a little late,
            # by microseconds, for one clock read less per turn.
            for fd, events in poll(0.0 if ready else max(0.0, self._deadline - now)):
                try:
                    transaction = transactions[fd]
                except KeyError:
                    self._drain_wakeup()
                    continue
                transaction.on_events(events)
            now = monotonic()
            if now >= self._deadline:
                self._run_due(now)
            if ready:
                starting = ready[:]
                ready.clear()
                for cursor in starting:
                    self._start_next(cursor)

    def _start_next(self, cursor: WorkerCursor) -> None:
        target = cursor.next_ping()
        if target is None:
            self._running -= 1
            return
        transaction = PlainTransaction(self, cursor, self._steps, self._debug)
        transaction.start(target.family, target.sockaddr, self._bind)

    def _run_due(self, now: float) -> None:
        """Fire the timers that are due and wake the workers whose -w pause is over."""
        timers = self._timers
        pauses = self._pauses
        while timers and timers[0][0] <= now:
            heapq.heappop(timers)[2]()
        while pauses and pauses[0][0] <= now:
            self._ready.append(heapq.heappop(pauses)[2])
        self._update_deadline()

    def _update_deadline(self) -> None:
        timers = self._timers
        pauses = self._pauses
        deadline = timers[0][0] if timers else math.inf
        if pauses and pauses[0][0] < deadline:
            deadline = pauses[0][0]
        self._deadline = deadline

    def _drain_wakeup(self) -> None:
        """A signal arrived; its Python handler has run already, only the byte is left."""
        if self._wakeup is not None:
            with contextlib.suppress(OSError):
                self._wakeup.recv(512)

    def _wake_pauses(self) -> None:
        """Stopping: workers waiting out -w learn it now, not when the wait ends."""
        self._ready.extend(cursor for _, _, cursor in self._pauses)
        self._pauses.clear()
        self._update_deadline()

    # -- timers --------------------------------------------------------------------

    def _at(self, when: float, callback: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (when, next(self._order), callback))
        self._update_deadline()

    def _schedule_helpers(self) -> None:
        run = self.run
        started = run.started
        self._every(started + SWEEP_INTERVAL_S, SWEEP_INTERVAL_S, self._sweep)
        if run.ticks:
            run.tick()  # 1.1 prints the count of second 0 at once
            self._every(started + run.tick_interval, run.tick_interval, run.tick)
        if run.wants_progress():
            self._every(started + PROGRESS_DELAY_S, PROGRESS_INTERVAL_S, run.draw_progress)
        if run.options.duration_s:
            self._at(started + run.options.duration_s, run.stop)

    def _every(self, first: float, interval: float, callback: Callable[[], None]) -> None:
        """Call ``callback`` at ``first`` and every ``interval`` after, without drifting."""

        def fire(when: float = first) -> None:
            callback()
            self._at(when + interval, lambda: fire(when + interval))

        self._at(first, fire)

    def _sweep(self) -> None:
        """End the transactions that have waited longer than the reply timeout."""
        limit = perf_counter_ns() - self._timeout_ns
        for transaction in [t for t in self.transactions.values() if t.last_activity_ns < limit]:
            transaction.finish(TIMEOUT_CODE)

    # -- signals -------------------------------------------------------------------

    def _catch_stop_signal(self) -> Callable[[], None]:
        """The first stop signal stops the run gently; the next one acts as if uncaught."""
        run = self.run
        stop_signal = run.stop_signal
        try:
            reader, writer = socket.socketpair()
            reader.setblocking(False)
            writer.setblocking(False)
            previous_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        except ValueError:  # not the main thread: signals are someone else's business
            reader.close()
            writer.close()
            return lambda: None

        def first_signal(signum: int, frame: object) -> None:
            signal.signal(signum, signal.SIG_DFL)
            run.stop()

        previous_handler = signal.signal(stop_signal, first_signal)
        self._wakeup = reader
        self.epoll.register(reader.fileno(), select.EPOLLIN)

        def restore() -> None:
            if signal.getsignal(stop_signal) is first_signal:
                signal.signal(stop_signal, previous_handler)
            signal.set_wakeup_fd(previous_fd)
            self._wakeup = None
            reader.close()
            writer.close()

        return restore


def run_plain(run: Run, indexes: range | list[int]) -> list[WorkerOutcome]:
    """Run the given workers of a plain (no TLS, no AUTH) run; outcomes in that order."""
    return Engine(run, indexes).run_to_end()
