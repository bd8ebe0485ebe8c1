"""One destination's connections: a queue of attempts and the connections that carry them.

Attempts for the same :class:`~mailwarden.queue.plan.DestinationKey` wait in one queue. A
connection takes the next attempt as soon as it finished one, up to the shaping limit of
messages per connection, and waits ``idle_timeout`` for more before it says QUIT. New
connections open while attempts wait and the node-wide concurrency slots allow; a slot of a
dead worker frees itself (see :mod:`mailwarden.queue.limits`).

A destination that cannot be reached fails every attempt waiting for it at once (each is
deferred on its own schedule), so a dead MX is tried once per round, not once per message;
one slow destination holds only its own queue, never the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mailwarden.delivery.connection import OutboundConnection, open_first
from mailwarden.delivery.errors import DeliveryError, DeliveryReply
from mailwarden.delivery.mx import Target, resolve_targets
from mailwarden.delivery.tls import TlsPolicy
from mailwarden.queue.plan import DestinationKey
from mailwarden.smtp.client import Envelope, TransactionDone
from mailwarden.tlsrpt import recorder as tls_reports

if TYPE_CHECKING:
    from mailwarden.queue.manager import Job, QueueManager

log = logging.getLogger("mailwarden.queue")

TARGETS_TTL = 60.0  # seconds a resolved target list is reused for new connections
DEAD_FOR = 60.0  # seconds a destination nobody could connect to is not tried again (Postfix:
# "delivery temporarily suspended"), so a dead MX is tried once per round, not per message
SLOT_RETRY = 0.1  # seconds before asking again for a slot another worker holds
YIELD_CHECK = 0.25  # seconds between an idle connection's looks for a worker wanting its slot


@dataclass(slots=True)
class Sent:
    """What one attempt over a connection produced, for the manager's verdicts."""

    done: TransactionDone | None = None
    error: DeliveryError | None = None
    connection: OutboundConnection | None = None
    connect_seconds: float | None = None
    seconds: float = 0.0
    reused: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class Destination:
    """The queue and connections of one destination key."""

    def __init__(self, key: DestinationKey, manager: QueueManager) -> None:
        self.key = key
        self.manager = manager
        self.jobs: deque[Job] = deque()
        self.connections = 0
        self._idle: deque[asyncio.Future[Job | None]] = deque()
        self._targets: list[Target] | None = None
        self._targets_until = 0.0
        self._grow_handle: asyncio.TimerHandle | None = None
        self._wanting: set[str] = set()  # slot keys this destination waits for
        self._tasks: set[asyncio.Task[None]] = set()
        self.last_used = time.monotonic()
        self.dead_until = 0.0
        self.dead_error: DeliveryError | None = None

    # --- attempts in ------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        self.last_used = now = time.monotonic()
        if self.dead_error is not None and now < self.dead_until and self.connections == 0:
            self.manager.finished(job, Sent(error=self._suspended_error()))
            return
        while self._idle:
            waiter = self._idle.popleft()
            if not waiter.done():
                waiter.set_result(job)
                return
        self.jobs.append(job)
        self._grow()

    def _grow(self) -> None:
        """Open connections while attempts wait for one and the limits allow."""
        manager = self.manager
        while len(self.jobs) > self.connections and not manager.stopping:
            job = self.jobs[0]
            slots = manager.acquire_slots(self.key, job, self._wanting)
            if slots is None:
                # Asked again while attempts wait, whatever this destination already has:
                # slots free up in other workers too, and those know that this one waits.
                if self._grow_handle is None:
                    loop = asyncio.get_running_loop()
                    self._grow_handle = loop.call_later(SLOT_RETRY, self._grow_later)
                return
            self.connections += 1
            task = asyncio.get_running_loop().create_task(self._connection(slots))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if self._wanting:
            manager.stop_wanting(self._wanting)

    def _grow_later(self) -> None:
        self._grow_handle = None
        self._grow()

    def _next_job(self, timeout: float) -> asyncio.Future[Job | None]:
        """The next waiting attempt, or None after ``timeout`` seconds without one."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Job | None] = loop.create_future()
        if self.jobs:
            waiter.set_result(self.jobs.popleft())
            return waiter
        self._idle.append(waiter)
        handle = loop.call_later(timeout, _expire, waiter)
        waiter.add_done_callback(lambda _: handle.cancel())
        return waiter

    async def _wait_for_job(self, timeout: float, slots: list[Any]) -> Job | None:
        """The next attempt for an idle connection; None after ``timeout`` seconds, or sooner
        when another worker waits for one of its slots (an idle connection holding a slot
        another worker's queue needs would stall that queue for the idle timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            job = await self._next_job(min(left, YIELD_CHECK))
            if job is not None or self.manager.stopping:
                return job
            if self.manager.should_yield(slots, more_waiting=False):
                return None

    # --- one connection ----------------------------------------------------------------

    async def _connection(self, slots: list[Any]) -> None:
        connection: OutboundConnection | None = None
        manager = self.manager
        try:
            if not self.jobs:
                return
            job: Job | None = self.jobs.popleft()
            opened = time.monotonic()
            try:
                connection = await self._open()
            except DeliveryError as error:
                assert job is not None
                self._unreachable(job, error)
                return
            connect_seconds = time.monotonic() - opened
            self.dead_error = None
            limit = manager.messages_per_connection(self.key, job, connection)
            while job is not None:
                await manager.pace(self.key, job, connection)
                sent = await self._send(job, connection)
                if connect_seconds is None and _went_stale(sent) and not job.fresh_retry:
                    # The remote closed the reused connection while it was idle (its 421
                    # or its close is read only now): nothing of this transaction reached
                    # it, so it goes again, first, on a new connection, not counted as an
                    # attempt (as Postfix does with a cached connection).
                    job.fresh_retry = True
                    self.jobs.appendleft(job)
                    break
                if connect_seconds is not None:
                    sent.connect_seconds, connect_seconds = connect_seconds, None
                else:
                    sent.reused = True
                manager.finished(job, sent)
                if not connection.usable or connection.messages_sent >= limit:
                    break
                if manager.stopping:
                    break
                if manager.should_yield(slots, more_waiting=bool(self.jobs)):
                    break  # another worker waits for this slot: the next connection is its
                job = await self._wait_for_job(manager.settings.idle_timeout, slots)
        except Exception:
            log.exception("destination %s: connection failed unexpectedly", self.key.name)
        finally:
            if connection is not None:
                await connection.close()
            for slot in slots:
                with contextlib.suppress(Exception):
                    slot.release()
            self.connections -= 1
            self.last_used = time.monotonic()
            if not manager.stopping:
                self._grow()

    async def _open(self) -> OutboundConnection:
        targets = await self._resolve()
        settings = self.manager.settings
        options = self.key.options(settings.connect_timeout)
        policies = None
        # An MX delivery: DANE and MTA-STS may apply per MX host; not to a TLS report's own
        # delivery (RFC 8460 §5.3: delivered despite TLS failures).
        if self.key.hop is None and options.tls.source != tls_reports.REPORT_TLS_SOURCE:
            policies = await self.manager.tls_selector.select(self.key.domain, targets, options.tls)
        tried: list[DeliveryError] = []
        try:
            connection, failures = await open_first(
                targets,
                options,
                address_limit=settings.mx_address_limit,
                session_limit=settings.mx_session_limit,
                policies=policies,
                tried=tried,
            )
        except DeliveryError:
            _count_tls(targets, policies, options.tls, tried, None)
            raise
        _count_tls(targets, policies, options.tls, failures, connection)
        for failure in failures:
            log.info("destination %s: %s", self.key.name, failure)
        return connection

    async def _resolve(self) -> list[Target]:
        now = time.monotonic()
        if self._targets is None or now >= self._targets_until:
            settings = self.manager.settings
            self._targets = await resolve_targets(
                self.key.domain,
                hop=self.key.hop,
                allow_ip_literals=settings.allow_ip_literals,
                ip_version=settings.ip_version,
                port=settings.port,
            )
            self._targets_until = now + TARGETS_TTL
        return self._targets

    async def _send(self, job: Job, connection: OutboundConnection) -> Sent:
        started = time.monotonic()
        envelope: Envelope = job.envelope()
        try:
            message = job.message_bytes()
        except OSError as error:
            reply = DeliveryReply(451, "4.3.0", f"cannot read the queued message: {error}")
            return Sent(error=DeliveryError(reply, stage="spool"), connection=connection)
        try:
            done = await connection.send(envelope, message)
        except DeliveryError as error:
            return Sent(error=error, connection=connection, seconds=time.monotonic() - started)
        return Sent(done=done, connection=connection, seconds=time.monotonic() - started)

    def _unreachable(self, job: Job, error: DeliveryError) -> None:
        """Fail ``job`` with ``error``, and when no other connection of this destination is
        working, every attempt waiting for it too (they would meet the same dead host); for
        DEAD_FOR seconds then, new attempts fail at once without a connection."""
        self.manager.finished(job, Sent(error=error))
        if self.connections == 1:
            if not error.permanent and error.stage in ("dns", "connect", "timeout", "greeting"):
                self.dead_error, self.dead_until = error, time.monotonic() + DEAD_FOR
            while self.jobs:
                self.manager.finished(self.jobs.popleft(), Sent(error=error))

    def _suspended_error(self) -> DeliveryError:
        assert self.dead_error is not None
        reply = self.dead_error.reply
        text = f"delivery temporarily suspended: {reply.text}"
        return DeliveryError(
            DeliveryReply(reply.code, reply.enhanced, text, reply.remote),
            stage=self.dead_error.stage,
            host=self.dead_error.host,
        )

    # --- shutdown ----------------------------------------------------------------------

    def drain_waiting(self, fail: Callable[[Job], None]) -> None:
        """Hand back every waiting attempt (shutdown) and wake the idle connections."""
        if self._grow_handle is not None:
            self._grow_handle.cancel()
            self._grow_handle = None
        while self.jobs:
            fail(self.jobs.popleft())
        if self._wanting:
            self.manager.stop_wanting(self._wanting)
        while self._idle:
            waiter = self._idle.popleft()
            if not waiter.done():
                waiter.set_result(None)

    async def wait_closed(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def idle(self) -> bool:
        return not self.jobs and self.connections == 0


def _count_tls(
    targets: list[Target],
    policies: list[TlsPolicy] | None,
    base: TlsPolicy,
    failures: list[DeliveryError],
    connection: OutboundConnection | None,
) -> None:
    """Count the TLS outcome of each target tried for the TLS reports (RFC 8460)."""
    recorder = tls_reports.current()
    if recorder.enabled:
        used = policies if policies is not None else [base] * len(targets)
        recorder.connection_attempts(targets, used, failures, connection)


def _went_stale(sent: Sent) -> bool:
    """A 421 or a lost connection before the message data: what a reused connection the
    remote timed out meets at its next MAIL FROM (the client machine gives a 421 to MAIL as
    the transaction's MAIL reply, then the close)."""
    if sent.done is not None:
        return sent.done.mail_reply.code == 421
    error = sent.error
    if error is None or error.permanent or error.stage != "mail":
        return False
    return error.reply.code == 421 or error.reply.enhanced == "4.4.2"


def _expire(waiter: asyncio.Future[Job | None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
