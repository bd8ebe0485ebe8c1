"""The node's daily run: yesterday's reports, sent once a day by one worker (worker 0).

RFC 8460 §4.1: a report covers one UTC day, and senders should spread their sending so that
receivers are not flooded at midnight. The run happens at 00:00 UTC plus a random delay of up
to ``[tlsrpt] max_delay`` seconds, drawn each day. A node that starts after that moment (it
was down at the time) catches up within a minute; destinations already sent are marked in
``tlsrpt.sqlite``, so catching up never sends a report twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import random
import time
from collections.abc import Callable

from mailwarden.config import Config
from mailwarden.tlsrpt.send import Queue, send_day, yesterday

log = logging.getLogger("mailwarden.tlsrpt")

CATCH_UP_DELAY = 60.0  # most seconds a node started after today's moment waits to catch up


def seconds_until_run(now: float, offset: float, *, catch_up: float) -> float:
    """Seconds from ``now`` until the next run when today's run is at 00:00 UTC + ``offset``
    seconds: until that moment if it is still ahead, else ``catch_up`` (a start after it:
    yesterday's reports may not have gone yet)."""
    day = datetime.datetime.fromtimestamp(now, datetime.UTC).date()
    midnight = datetime.datetime.combine(day, datetime.time(), datetime.UTC).timestamp()
    moment = midnight + offset
    return moment - now if moment > now else catch_up


def seconds_until_tomorrow(now: float, offset: float) -> float:
    """Seconds from ``now`` until tomorrow's 00:00 UTC + ``offset``."""
    day = datetime.datetime.fromtimestamp(now, datetime.UTC).date() + datetime.timedelta(days=1)
    midnight = datetime.datetime.combine(day, datetime.time(), datetime.UTC).timestamp()
    return midnight + offset - now


class DailyReports:
    """The task that sends yesterday's reports every day, on the worker's event loop."""

    def __init__(
        self,
        config: Config,
        queue: Queue,
        new_id: Callable[[], str],
        *,
        clock: Callable[[], float] = time.time,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.config = config
        self.queue = queue
        self.new_id = new_id
        self.clock = clock
        self.draw = draw
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _offset(self) -> float:
        return self.draw() * self.config.tlsrpt.max_delay

    async def _run(self) -> None:
        catch_up = self.draw() * min(CATCH_UP_DELAY, self.config.tlsrpt.max_delay)
        delay = seconds_until_run(self.clock(), self._offset(), catch_up=catch_up)
        while True:
            await asyncio.sleep(delay)
            await self.run_once()
            delay = seconds_until_tomorrow(self.clock(), self._offset())

    async def run_once(self) -> None:
        """Send yesterday's reports; every failure is logged, none stops the task."""
        day = yesterday(self.clock())
        try:
            outcomes = await send_day(
                self.config, day, queue=self.queue, new_id=self.new_id, clock=self.clock
            )
        except Exception:
            log.exception("TLS reports for %s: the run failed", day.isoformat())
            return
        sent = [o for o in outcomes if o.status in ("queued", "posted")]
        if outcomes:
            log.info(
                "TLS reports for %s: %d sent, %d domains recorded",
                day.isoformat(),
                len(sent),
                len({o.domain for o in outcomes}),
            )
