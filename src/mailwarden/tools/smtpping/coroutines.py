"""The asyncio driver, for runs with TLS or AUTH (plain runs take ``engine.py``).

Each worker is a task walking its ``WorkerCursor`` and awaiting ``session.ping``.
Ticks, the progress line, --duration and -w pauses belong to the run's
``Timekeeper``; this driver only adapts it to asyncio: one timer handle kept on
the timekeeper's deadline (``_Alarm``), a future per -w pause, and the stop
signal through ``loop.add_signal_handler``. Reply timeouts are asyncio's own
deadlines, inside ``session.ping``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable, Coroutine
from time import monotonic
from typing import Any

from .session import ping
from .timekeeper import Timekeeper
from .worker import RunView, WorkerCursor, WorkerOutcome


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


class _Alarm:
    """One loop timer at the timekeeper's deadline; fires what is due, wakes pauses."""

    __slots__ = ("_clock", "_handle", "_loop", "_when")

    def __init__(self, clock: Timekeeper, loop: asyncio.AbstractEventLoop) -> None:
        self._clock = clock
        self._loop = loop
        self._handle: asyncio.TimerHandle | asyncio.Handle | None = None
        self._when = math.inf

    def arm(self) -> None:
        """Call after anything that may bring the deadline forward (a pause, the stop)."""
        deadline = self._clock.deadline
        if deadline >= self._when:
            return
        if self._handle is not None:
            self._handle.cancel()
        self._when = deadline
        self._handle = self._loop.call_later(max(0.0, deadline - monotonic()), self._fire)

    def _fire(self) -> None:
        self._handle, self._when = None, math.inf
        for waiter in self._clock.run_due(monotonic()):
            if not waiter.done():
                waiter.set_result(None)
        self.arm()

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle, self._when = None, math.inf


async def run_workers(
    run: RunView, indexes: range | list[int], clock: Timekeeper
) -> list[WorkerOutcome]:
    """Run the given workers to the end; returns their outcomes in that order."""
    loop = asyncio.get_running_loop()
    alarm = _Alarm(clock, loop)
    clock.begin()
    _catch_stop_signal(clock, loop, alarm)
    alarm.arm()
    try:
        workers = (_worker(run, index, clock, alarm) for index in indexes)
        return list(await asyncio.gather(*workers))
    finally:
        alarm.cancel()
        clock.end()


async def _worker(run: RunView, index: int, clock: Timekeeper, alarm: _Alarm) -> WorkerOutcome:
    cursor = WorkerCursor(run, index, clock)
    plan = run.plan
    loop = asyncio.get_running_loop()
    while (target := cursor.next_ping()) is not None:
        pause = cursor.ping_done(await ping(target.sockaddr, target.family, plan))
        if pause > 0:
            waiter = loop.create_future()
            clock.pause(pause, waiter)
            alarm.arm()
            await waiter
    return cursor.outcome


def _catch_stop_signal(clock: Timekeeper, loop: asyncio.AbstractEventLoop, alarm: _Alarm) -> None:
    stop_signal = clock.stop_signal

    def first_signal() -> None:
        loop.remove_signal_handler(stop_signal)
        clock.signalled()
        alarm.arm()  # the stop moved the deadline to now: wake the -w pauses

    # Only the main thread may own signals; elsewhere Ctrl-C is left alone.
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(stop_signal, first_signal)
