"""The event loop of plain runs: one epoll set, the run's timekeeper, no asyncio.

Every socket of the run sits in one edge-triggered epoll set. One ``epoll_wait``
drains every ready socket, each reply answered straight from the read
(``plain.py``); a ping that ends hands its result to its worker, whose next ping
starts in the same turn of the loop. The rate ticker, the progress line, the
--duration stop, -w pauses and the reply-timeout sweep belong to the run's
``Timekeeper``: the loop waits until its deadline and then lets it fire what is
due. A stop signal (Ctrl-C, or SIGUSR1 in a --processes child) reaches the loop
through ``signal.set_wakeup_fd``. Runs with TLS or AUTH take the asyncio driver
(``coroutines.py``) instead.
"""

from __future__ import annotations

import contextlib
import select
import signal
import socket
from collections.abc import Callable
from time import monotonic, perf_counter_ns

from .plain import PlainTransaction, plan_steps
from .result import TIMEOUT_CODE
from .timekeeper import Timekeeper
from .worker import RunView, WorkerCursor, WorkerOutcome

SWEEP_INTERVAL_S = 0.25


class Engine:
    """Runs the workers of one plain run to the end."""

    def __init__(self, run: RunView, indexes: range | list[int], clock: Timekeeper) -> None:
        self.clock = clock
        self.epoll = select.epoll()
        self.transactions: dict[int, PlainTransaction] = {}
        self.cursors = [WorkerCursor(run, index, clock) for index in indexes]
        self._steps = plan_steps(run.plan)
        self._ready: list[WorkerCursor] = []  # workers whose next ping starts this turn
        self._running = 0
        self._timeout_ns = int(run.plan.timeout_s * 1e9)
        self._wakeup: socket.socket | None = None
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
            self.clock.pause(pause, cursor)
        else:
            # Started by the loop, not from here: a ping that fails at once (a
            # refused connect) must not recurse into the next one.
            self._ready.append(cursor)

    # -- the loop ----------------------------------------------------------------

    def run_to_end(self) -> list[WorkerOutcome]:
        clock = self.clock
        clock.begin()
        clock.every(clock.started + SWEEP_INTERVAL_S, SWEEP_INTERVAL_S, self._sweep)
        self._ready.extend(self.cursors)
        self._running = len(self.cursors)
        restore = self._catch_stop_signal()
        try:
            self._loop()
        finally:
            restore()
            self.epoll.close()
            clock.end()
        return [cursor.outcome for cursor in self.cursors]

    def _loop(self) -> None:
        poll = self.epoll.poll
        clock = self.clock
        transactions = self.transactions
        ready = self._ready
        now = monotonic()
        while self._running:
            # ``now`` is from before the last turn's work: the wait ends a little late,
            # by microseconds, for one clock read less per turn.
            for fd, events in poll(0.0 if ready else max(0.0, clock.deadline - now)):
                try:
                    transaction = transactions[fd]
                except KeyError:
                    self._drain_wakeup()
                    continue
                transaction.on_events(events)
            now = monotonic()
            if now >= clock.deadline:
                ready.extend(clock.run_due(now))
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

    def _drain_wakeup(self) -> None:
        """A signal arrived; its Python handler has run already, only the byte is left."""
        if self._wakeup is not None:
            with contextlib.suppress(OSError):
                self._wakeup.recv(512)

    # -- timers ----------------------------------------------------------------------

    def _sweep(self) -> None:
        """End the transactions that have waited longer than the reply timeout."""
        limit = perf_counter_ns() - self._timeout_ns
        for transaction in [t for t in self.transactions.values() if t.last_activity_ns < limit]:
            transaction.finish(TIMEOUT_CODE)

    # -- signals -------------------------------------------------------------------

    def _catch_stop_signal(self) -> Callable[[], None]:
        """The first stop signal stops the run gently; the next one acts as if uncaught."""
        clock = self.clock
        stop_signal = clock.stop_signal
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
            clock.signalled()  # the byte on the wakeup fd then ends the wait in epoll

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


def run_plain(run: RunView, indexes: range | list[int], clock: Timekeeper) -> list[WorkerOutcome]:
    """Run the given workers of a plain (no TLS, no AUTH) run; outcomes in that order."""
    return Engine(run, indexes, clock).run_to_end()
