"""The worker's sweep of its shard for held recipients whose retention ended.

Each worker sweeps its own shard, as it delivers only from it. A sweep is one transaction in
the store's commit thread (:meth:`SpoolStore.expire_held`) over at most :data:`BATCH`
messages, found through the ``recipients_due`` index, so a group commit or a delivery's
outcome waits for at most one small batch; what each message becomes is the pure
:func:`~mailwarden.queue.retention.plan_expiry`, when to look again the pure
:func:`~mailwarden.queue.retention.next_sweep` (the earliest retention end left, at most
``[queue] hold_sweep_interval`` away). A DSN it queues wakes the queue manager through the
store's ``MessageQueued`` event, and is delivered like any bounce.

With ``[queue] deliver = false`` nothing expires either (the operator froze the queue: what is
in it stays); the first sweep after delivery resumes catches up. A sweep that fails (the spool
cannot be written) changes nothing and is logged; the next one tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from mailwarden.delivery.errors import DeliveryReply
from mailwarden.queue.operations import dsn_record
from mailwarden.queue.retention import Expiry, next_sweep, plan_expiry
from mailwarden.spool.errors import SpoolError
from mailwarden.spool.operations import MessageChange
from mailwarden.spool.records import SpoolRecord
from mailwarden.spool.store import SpoolStore

log = logging.getLogger("mailwarden.queue")

BATCH = 100  # messages per sweep transaction: what a commit waits for at most


class SweepSettings(Protocol):
    """What the sweep reads of the queue manager's settings (current after a reload)."""

    @property
    def deliver(self) -> bool: ...
    @property
    def hold_sweep_interval(self) -> float: ...
    @property
    def reporting_mta(self) -> str: ...


class RetentionSweeper:
    """Sweeps one shard until stopped: ``start()``, then ``await stop()``."""

    def __init__(
        self,
        store: SpoolStore,
        settings: Callable[[], SweepSettings],
        *,
        new_id: Callable[[], str],
        clock: Callable[[], float] = time.time,
        batch: int = BATCH,
    ) -> None:
        self.store = store
        self.settings = settings
        self.new_id = new_id
        self.clock = clock
        self.batch = batch
        self.expired = 0  # recipients whose retention ended, since start
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            settings = self.settings()
            now = self.clock()
            if not settings.deliver:
                await asyncio.sleep(settings.hold_sweep_interval)
                continue
            wake = await self.sweep(now, settings)
            await asyncio.sleep(max(0.0, wake - self.clock()))

    async def sweep(self, now: float, settings: SweepSettings) -> float:
        """One sweep at ``now``; returns when the next one is due."""
        expiries: list[tuple[str, Expiry]] = []
        try:
            swept = await self.store.expire_held(
                now, self._decide(now, settings, expiries), limit=self.batch
            )
        except SpoolError as error:
            log.error("queue: cannot expire held messages: %s", error)
            return now + settings.hold_sweep_interval
        for message_id, expiry in expiries:
            self.expired += expiry.discarded + expiry.bounced
            log.info("queue: message %s: %s", message_id, describe(expiry))
        return next_sweep(
            now,
            interval=settings.hold_sweep_interval,
            earliest_end=swept.earliest_end,
            backlog=swept.more,
        )

    def _decide(
        self, now: float, settings: SweepSettings, expiries: list[tuple[str, Expiry]]
    ) -> Callable[[SpoolRecord, Callable[[int | None], bytes]], MessageChange | None]:
        """The store's ``decide`` for this sweep (it runs in the commit thread)."""
        from mailwarden.queue.bounces import RETURN_SIZE_LIMIT

        def decide(
            message: SpoolRecord, read: Callable[[int | None], bytes]
        ) -> MessageChange | None:
            def make_dsn(
                m: SpoolRecord, positions: Sequence[int], reply: DeliveryReply
            ) -> SpoolRecord | None:
                # One octet past the limit tells bounce_record the message is larger.
                data = read(RETURN_SIZE_LIMIT + 1)
                return dsn_record(
                    m, data, positions, reply, settings.reporting_mta, now, self.new_id()
                )

            expiry = plan_expiry(message, now, make_dsn)
            if expiry is None:
                return None
            expiries.append((message.id, expiry))
            return expiry.change

        return decide


def describe(expiry: Expiry) -> str:
    """The log line's text for one message: what the end of its hold did."""
    parts = []
    if expiry.discarded:
        parts.append(f"{expiry.discarded} recipient(s) discarded")
    if expiry.bounced:
        dsn = expiry.change.queue
        parts.append(
            f"{expiry.bounced} bounced"
            + (f", DSN {dsn.id} queued" if dsn is not None else ", no DSN due")
        )
    removed = ", removed from the spool" if expiry.change.remove else ""
    return f"hold retention ended: {'; '.join(parts)}{removed}"
