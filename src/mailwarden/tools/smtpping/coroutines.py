"""The asyncio driver, for runs with TLS or AUTH (plain runs take ``engine.py``).

Each worker is a task walking its ``WorkerCursor`` and awaiting ``session.ping``;
the rate ticker and the progress line are tasks beside them.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from .session import ping
from .worker import WorkerCursor, WorkerOutcome

if TYPE_CHECKING:
    from .runner import Run


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


async def run_workers(run: Run, indexes: range | list[int]) -> list[WorkerOutcome]:
    """Run the given workers to the end; returns their outcomes in that order."""
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()
    run.on_stop = wake.set
    run.started = time.monotonic()
    _catch_stop_signal(run, loop)
    if run.options.duration_s:
        loop.call_later(run.options.duration_s, run.stop)
    helpers = []
    if run.ticks:
        helpers.append(asyncio.create_task(_ticker(run)))
    if run.wants_progress():
        helpers.append(asyncio.create_task(_progress(run)))
    try:
        return list(await asyncio.gather(*(_worker(run, index, wake) for index in indexes)))
    finally:
        for helper in helpers:
            helper.cancel()
        run.on_stop = None
        run.finish_helpers()


async def _worker(run: Run, index: int, wake: asyncio.Event) -> WorkerOutcome:
    cursor = WorkerCursor(run, index)
    plan = run.plan
    while (target := cursor.next_ping()) is not None:
        pause = cursor.ping_done(await ping(target.sockaddr, target.family, plan))
        if pause > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), pause)
    return cursor.outcome


async def _ticker(run: Run) -> None:
    next_tick = time.monotonic()
    while True:
        run.tick()
        next_tick += run.tick_interval
        await asyncio.sleep(max(0.0, next_tick - time.monotonic()))


async def _progress(run: Run) -> None:
    await asyncio.sleep(1.0)
    while True:
        run.draw_progress()
        await asyncio.sleep(0.5)


def _catch_stop_signal(run: Run, loop: asyncio.AbstractEventLoop) -> None:
    stop_signal = run.stop_signal

    def first_interrupt() -> None:
        # Like 1.1: the first Ctrl-C ends the run gracefully, the next one kills.
        loop.remove_signal_handler(stop_signal)
        signal.signal(stop_signal, signal.SIG_DFL)
        run.stop()

    # Only the main thread may own signals; elsewhere Ctrl-C is left alone.
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(stop_signal, first_interrupt)
