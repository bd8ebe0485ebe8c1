"""The queue manager of one worker: it delivers what that worker's spool shard holds.

Loop: lease the due messages (a lease, not a state: a crashed delivery frees itself), split
each into attempts by destination, run ``pre_delivery``, hand each attempt to its
destination's connections (:mod:`mailwarden.queue.pool`), judge the replies
(:mod:`mailwarden.queue.verdicts`), run ``post_delivery``, and once every attempt of a message
is done record the outcome (states, DSNs, removal) in one batched transaction with the end of
the lease. A message leaves the spool only when all its recipients are final.

Limits that hold for the whole node (shaping concurrency and rates, suspensions, backoff) go
through :class:`~mailwarden.queue.limits.NodeLimits`, shared by the node's workers.

Failure modes: a script error in ``pre_delivery`` queues the attempt 5 minutes later without
counting a retry (as Halon does); one in ``post_delivery`` leaves the replies' own verdicts;
a spool error while recording leaves the lease to run out, and the attempt is made again
(at-least-once: a crash between the remote's 250 and the record redelivers, never loses).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mailwarden.delivery.connection import OutboundConnection
from mailwarden.delivery.errors import DeliveryError, DeliveryReply
from mailwarden.delivery.tls import TlsPolicy
from mailwarden.delivery.tls_selection import TlsPolicySelector
from mailwarden.policy.delivery import (
    DeliveryAction,
    DeliveryAttempt,
    DeliveryResult,
    RecipientDelivery,
    Retry,
)
from mailwarden.policy.hooks import POST_DELIVERY, PRE_DELIVERY
from mailwarden.policy.runner import HookFailed, call_hook
from mailwarden.policy.script import PolicyScript
from mailwarden.queue import bounces
from mailwarden.queue.limits import NodeLimits
from mailwarden.queue.plan import DestinationKey, Planner, group_by_domain
from mailwarden.queue.pool import Destination, Sent
from mailwarden.queue.retention import DEFAULT_RETENTION, DEFAULT_SWEEP_INTERVAL
from mailwarden.queue.schedule import RetrySchedule
from mailwarden.queue.shaping import (
    DeliveryFields,
    Limits,
    ShapingDefaults,
    ShapingRule,
    Suspension,
    limits_for,
)
from mailwarden.queue.sweeper import RetentionSweeper
from mailwarden.queue.verdicts import Verdict, apply_action, judge, override
from mailwarden.smtp.client import Envelope, Recipient
from mailwarden.spool.errors import SpoolError
from mailwarden.spool.events import MessageQueued, SpoolEvent
from mailwarden.spool.outcomes import AttemptOutcome, LeasedMessage
from mailwarden.spool.states import RecipientState
from mailwarden.spool.store import SpoolStore

log = logging.getLogger("mailwarden.queue")

SCRIPT_FAILURE_DELAY = 300.0  # pre_delivery raised: try again in 5 minutes, not counted
DESTINATION_IDLE = 300.0  # seconds after which an unused destination is forgotten
TYPICAL_SIZE = 16 * 1024  # the least a leased message is assumed to hold in memory
LIMITS_TTL = 1.0  # seconds a destination's shaping limits and the suspensions are reused
NO_DOMAIN = DeliveryReply(550, "5.1.3", "recipient address has no domain")


@dataclass(frozen=True, slots=True)
class ManagerSettings:
    deliver: bool = True  # False: keep what is queued, attempt nothing ([queue] deliver)
    schedule: RetrySchedule = field(default_factory=RetrySchedule)
    reporting_mta: str = "localhost"
    lease_duration: float = 600.0
    poll_interval: float = 5.0
    lease_batch: int = 256
    max_in_flight: int = 4000  # messages leased and not yet recorded, per worker
    # ... and the bytes they hold in memory ([queue] max_bytes_in_flight): row bodies are
    # read with the lease (spilled ones from their files when sent), so leasing stops at this
    # and a worker's memory stays bounded whatever the sizes of the queued messages.
    max_bytes_in_flight: int = 64 * 1024 * 1024
    largest_inline: int = 2 * (131072 + 1048576)  # the most a leased message holds in memory
    connect_timeout: float = 30.0
    mx_address_limit: int = 5  # addresses tried per attempt (0: all), Postfix's default
    mx_session_limit: int = 2  # servers that greeted and failed, per attempt (0: all)
    idle_timeout: float = 5.0
    allow_ip_literals: bool = False
    ip_version: str = "any"
    port: int = 25  # of MX hosts ([delivery] port)
    hook_timeout: float = 60.0
    shaping: tuple[ShapingRule, ...] = ()  # [[shaping]] rules (mailwarden.queue.shaping)
    defaults: ShapingDefaults = field(default_factory=ShapingDefaults)  # per destination
    hold_retention: float = DEFAULT_RETENTION  # a delivery hook's Hold without its own
    hold_sweep_interval: float = DEFAULT_SWEEP_INTERVAL  # looks for ended retentions


class MessageRun:
    """One leased message while its attempts are under way."""

    __slots__ = ("_bytes", "leased", "new_records", "pending", "remote_mta", "size", "verdicts")

    def __init__(self, leased: LeasedMessage) -> None:
        self.leased = leased
        # In memory while in flight: the row's bytes, and once sent their joined copy.
        self.size = 2 * (len(leased.headers) + len(leased.body or b""))
        self.pending = 0
        self.verdicts: list[Verdict] = []
        self.remote_mta: dict[int, str] = {}
        self._bytes: bytes | None = None

    def message_bytes(self) -> bytes:
        if self._bytes is None:
            self._bytes = self.leased.message_bytes()
        return self._bytes


@dataclass(slots=True)
class Job:
    """One attempt: some recipients of one message, to one destination."""

    run: MessageRun
    attempt: DeliveryAttempt
    positions: list[int]
    key: DestinationKey | None = None
    route_tls: TlsPolicy | None = None
    fresh_retry: bool = False  # sent again on a new connection after a stale reused one

    def envelope(self) -> Envelope:
        record = self.run.leased.record
        params = record.sender_params
        recipients = []
        for position in self.positions:
            rcpt = record.recipients[position]
            notify = rcpt.params.get("NOTIFY")
            recipients.append(
                Recipient(
                    rcpt.address,
                    tuple(notify.upper().split(",")) if notify else (),
                    rcpt.params.get("ORCPT"),
                )
            )
        body = params.get("BODY")
        return Envelope(
            record.sender,
            recipients,
            body=body.upper() if body else None,
            smtputf8="SMTPUTF8" in params,
            ret=params.get("RET"),
            envid=params.get("ENVID"),
        )

    def message_bytes(self) -> bytes:
        return self.run.message_bytes()


ScriptFor = Callable[[str], PolicyScript | None]


class QueueManager:
    """Delivers one worker's shard. ``start()`` then ``stop()``; see the module docstring."""

    def __init__(
        self,
        store: SpoolStore,
        settings: ManagerSettings,
        planner: Planner,
        limits: NodeLimits,
        *,
        script_for: ScriptFor,
        owner: str,
        new_id: Callable[[], str],
        clock: Callable[[], float] = time.time,
        tls_selector: TlsPolicySelector | None = None,
    ) -> None:
        self.store = store
        self.tls_selector = tls_selector if tls_selector is not None else TlsPolicySelector()
        self.settings = settings
        self.planner = planner
        self.limits = limits
        self.script_for = script_for
        self.owner = owner
        self.new_id = new_id
        self.clock = clock
        self.stopping = False
        self.destinations: dict[DestinationKey, Destination] = {}
        self.in_flight: dict[str, MessageRun] = {}
        self.bytes_in_flight = 0  # what the in-flight messages hold in memory
        self._typical_size = settings.largest_inline  # until sizes are seen: the most
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._finished: list[AttemptOutcome] = []
        self._flushing = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self.sweeper: RetentionSweeper | None = None
        self._limits_cache: dict[tuple[Any, ...], tuple[float, Any]] = {}
        self._suspensions: list[Suspension] = []
        self._backoff = limits.backoff_view()
        self._suspensions_until = 0.0
        self.delivered = 0
        self.deferred = 0
        self.bounced = 0

    # --- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        await self.store.clear_leases()
        self._unsubscribe = self.store.events.subscribe(self._on_spool_event)
        self._loop_task = asyncio.get_running_loop().create_task(self._run())
        # Quarantine retention: its own task, its own small transactions (queue/sweeper.py).
        self.sweeper = RetentionSweeper(
            self.store, lambda: self.settings, new_id=self.new_id, clock=self.clock
        )
        self.sweeper.start()

    async def stop(self, grace: float) -> None:
        """Stop leasing; attempts on the wire get ``grace`` seconds, the rest go back (their
        leases end; nothing is counted as an attempt)."""
        self.stopping = True
        if self.sweeper is not None:
            await self.sweeper.stop()
        self._wake.set()
        self._room.set()
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        for destination in self.destinations.values():
            destination.drain_waiting(self._give_back)
        waiting = [d.wait_closed() for d in self.destinations.values()]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*waiting), grace)
        if self._tasks:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*self._tasks, return_exceptions=True), 5)
        await self._flush()
        if self._unsubscribe is not None:
            self._unsubscribe()
        with contextlib.suppress(SpoolError):
            await self.store.clear_leases()

    def reconfigure(self, settings: ManagerSettings, planner: Planner) -> None:
        """Reload: attempts planned from now on follow these; those under way finish as
        they began."""
        self.settings, self.planner = settings, planner
        self._limits_cache.clear()
        self._wake.set()

    def wake(self) -> None:
        """Look at the spool now rather than at the next poll: another process (the queue
        CLI) made messages due."""
        self._wake.set()

    def _on_spool_event(self, event: SpoolEvent) -> None:
        if isinstance(event, MessageQueued):
            self._wake.set()

    # --- leasing ------------------------------------------------------------------------

    async def _run(self) -> None:
        settings = self.settings
        renew_at = self.clock() + settings.lease_duration / 3
        while not self.stopping:
            settings = self.settings  # a reload may have replaced them
            if not settings.deliver:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), settings.poll_interval)
                continue
            room = min(
                settings.max_in_flight - len(self.in_flight),
                # As many as the byte budget has room for, at the sizes seen so far.
                (settings.max_bytes_in_flight - self.bytes_in_flight) // self._typical_size,
            )
            if not self.in_flight:
                room = max(room, 1)  # one message always goes, however large
            if room <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            now = self.clock()
            if now >= renew_at:
                await self._renew(now)
                self._prune_destinations()
                renew_at = now + settings.lease_duration / 3
            self._wake.clear()
            try:
                leased = await self.store.lease_messages(
                    self.owner,
                    now=now,
                    duration=settings.lease_duration,
                    limit=min(room, settings.lease_batch),
                )
            except SpoolError as error:
                log.error("queue: cannot lease due messages: %s", error)
                leased = []
                await asyncio.sleep(settings.poll_interval)
            for message in leased:
                self._start_message(message, now)
            if len(leased) < min(room, settings.lease_batch):
                await self._sleep_until_due(now)

    async def _renew(self, now: float) -> None:
        with contextlib.suppress(SpoolError):
            await self.store.renew_leases(
                self.owner, now=now, duration=self.settings.lease_duration
            )

    def _prune_destinations(self) -> None:
        """Forget destinations idle for a while (and no longer marked dead), so their number
        stays bounded."""
        now = time.monotonic()
        for key, destination in list(self.destinations.items()):
            forgettable = destination.idle and destination.dead_until < now
            if forgettable and destination.last_used < now - DESTINATION_IDLE:
                del self.destinations[key]

    async def _sleep_until_due(self, now: float) -> None:
        timeout = self.settings.poll_interval
        with contextlib.suppress(SpoolError):
            due = await self.store.next_due(now)
            if due is not None:
                timeout = max(0.0, min(timeout, due - self.clock()))
        if timeout > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    # --- a message into attempts ---------------------------------------------------------

    def _start_message(self, leased: LeasedMessage, now: float) -> None:
        record = leased.record
        run = MessageRun(leased)
        self.in_flight[record.id] = run
        self.bytes_in_flight += run.size
        # The largest of the last sizes decides how many the next lease may take (the
        # estimate starts at the largest possible and comes down as smaller ones are seen).
        self._typical_size = max(run.size, (self._typical_size * 7) // 8, TYPICAL_SIZE)
        due = [
            position
            for position, rcpt in enumerate(record.recipients)
            if rcpt.state.deliverable and (rcpt.next_attempt or 0.0) <= now
        ]
        groups = group_by_domain(record, due)
        run.pending = len(groups)
        if not groups:
            self._complete(run)
            return
        script = self.script_for(record.server_id)
        for domain, positions in groups.items():
            if not domain:
                for position in positions:
                    address = record.recipients[position].address
                    run.verdicts.append(
                        Verdict(
                            position,
                            address,
                            RecipientState.BOUNCED,
                            NO_DOMAIN,
                            count_attempt=True,
                            dsn_action="failed",
                        )
                    )
                self._group_done(run)
                continue
            route = self.planner.routes.route_for(domain)
            attempt = self.planner.attempt(record, domain, positions, route)
            job = Job(run, attempt, positions, route_tls=route.tls)
            if script is not None and PRE_DELIVERY.name in script.hooks:
                self._spawn(self._pre_delivery(job, script))
            else:
                self._dispatch(job)

    async def _pre_delivery(self, job: Job, script: PolicyScript) -> None:
        try:
            action = await call_hook(
                script,
                PRE_DELIVERY.name,
                job.attempt.message_id,
                self.settings.hook_timeout,
                job.attempt,
            )
        except HookFailed:
            action = Retry(delay=SCRIPT_FAILURE_DELAY, reason="pre_delivery script error")
        if action is not None:
            self._decided(job, action)
            return
        self._dispatch(job)

    def _decided(self, job: Job, action: DeliveryAction) -> None:
        """pre_delivery answered with an action instead of an attempt."""
        record, now = job.run.leased.record, self.clock()
        for position in job.positions:
            job.run.verdicts.append(
                apply_action(
                    position,
                    record.recipients[position].address,
                    record.recipients[position].retry_count,
                    action,
                    reply=None,
                    schedule=self.settings.schedule,
                    received_at=record.received_at,
                    now=now,
                    hold_retention=self.settings.hold_retention,
                )
            )
        self._group_done(job.run)

    def _dispatch(self, job: Job) -> None:
        ca_file = job.route_tls.ca_file if job.route_tls else None
        try:
            key = self.planner.destination(job.attempt, ca_file)
        except DeliveryError as error:
            self.finished(job, Sent(error=error))
            return
        job.key = key
        suspended = self._suspended(key, job)
        if suspended:
            self._decided(job, Retry(delay=self.settings.poll_interval * 6, reason=suspended))
            return
        destination = self.destinations.get(key)
        if destination is None:
            destination = self.destinations[key] = Destination(key, self)
        destination.submit(job)

    # --- shaping ------------------------------------------------------------------------

    def _fields(
        self, key: DestinationKey, job: Job, connection: OutboundConnection | None
    ) -> DeliveryFields:
        return DeliveryFields(
            domain=job.attempt.domain,  # the key drops it for a route's own next hop
            mx=connection.target.host if connection else "",
            ip=connection.target.address if connection else "",
            source_ip=(connection.source_ip if connection else "")
            or (key.source.address if key.source else ""),
            metadata=dict(key.shaping),
            destination=key.hop.host if key.hop is not None else "",
        )

    def _limits(
        self, key: DestinationKey, job: Job, connection: OutboundConnection | None
    ) -> Limits:
        """The shaping limits for an attempt, worked out at most once a second per
        destination and remote (they change only with backoff, suspensions and reloads)."""
        now = self.clock()
        fields = self._fields(key, job, connection)
        cache_key = (key, fields.domain, fields.mx, fields.ip, fields.source_ip)
        cached = self._limits_cache.get(cache_key)
        if cached is not None and cached[0] > now:
            return cached[1]
        if now >= self._suspensions_until:
            self._suspensions = self.limits.suspensions(now)
            self._suspensions_until = now + LIMITS_TTL
        limits = limits_for(
            self.settings.shaping,
            fields,
            defaults=self.settings.defaults,
            backoff=self._backoff,
            suspensions=self._suspensions,
            now=now,
        )
        if len(self._limits_cache) > 10000:
            self._limits_cache.clear()
        self._limits_cache[cache_key] = (now + LIMITS_TTL, limits)
        return limits

    def _suspended(self, key: DestinationKey, job: Job) -> str | None:
        return self._limits(key, job, None).suspended

    def acquire_slots(self, key: DestinationKey, job: Job, wanting: set[str]) -> list[Any] | None:
        """Node-wide connection slots for a new connection to ``key``, or None at a limit;
        then the key it met is added to ``wanting``, and the node told that this worker
        waits for it (fair sharing, :mod:`mailwarden.queue.limits`)."""
        taken: list[Any] = []
        for slot_key, limit in self._limits(key, job, None).connection_keys:
            slot = self.limits.acquire_connection(slot_key, limit)
            if slot is None:
                for held in taken:
                    held.release()
                if slot_key not in wanting:
                    wanting.add(slot_key)
                    self.limits.want(slot_key, True)
                return None
            taken.append(slot)
        return taken

    def stop_wanting(self, wanting: set[str]) -> None:
        for slot_key in wanting:
            self.limits.want(slot_key, False)
        wanting.clear()

    def should_yield(self, slots: list[Any], *, more_waiting: bool) -> bool:
        """Whether a connection holding ``slots`` should close for another worker that waits
        for one of them (:meth:`NodeLimits.should_yield`)."""
        return any(self.limits.should_yield(s, more_waiting=more_waiting) for s in slots)

    def messages_per_connection(
        self, key: DestinationKey, job: Job, connection: OutboundConnection
    ) -> int:
        return self._limits(key, job, connection).max_messages_per_connection

    async def pace(self, key: DestinationKey, job: Job, connection: OutboundConnection) -> None:
        """Wait until every rate that applies to this message allows one more."""
        for rate_key, messages, interval in self._limits(key, job, connection).rate_keys:
            while True:
                wait = self.limits.take_rate(rate_key, messages, interval, self.clock())
                if wait <= 0:
                    break
                await asyncio.sleep(wait)

    # --- replies into verdicts -------------------------------------------------------------

    def finished(self, job: Job, sent: Sent) -> None:
        """An attempt is over (``sent`` has the transaction or the error)."""
        script = self.script_for(job.run.leased.record.server_id)
        hooked = script is not None and POST_DELIVERY.name in script.hooks
        verdicts, result = self._verdicts(job, sent, hooked)
        if job.key is not None and sent.connection is not None:
            self._note_backoff(job, sent)
        if hooked:
            assert script is not None and result is not None
            self._spawn(self._post_delivery(job, verdicts, result, script))
            return
        self._record_verdicts(job, verdicts)

    def _verdicts(
        self, job: Job, sent: Sent, want_result: bool
    ) -> tuple[list[Verdict], DeliveryResult | None]:
        record, now = job.run.leased.record, self.clock()
        schedule = self.settings.schedule
        connection = sent.connection
        success_dsn = None if connection is None or connection.extensions.dsn else "relayed"
        replies: list[DeliveryReply] = []
        if sent.done is not None:
            finals = {r.recipient: r.final for r in sent.done.recipients}
            for position in job.positions:
                address = record.recipients[position].address
                reply = finals.get(address)
                replies.append(
                    DeliveryReply.from_server(reply)
                    if reply is not None
                    else DeliveryReply(451, "4.3.0", "no reply for this recipient")
                )
        else:
            assert sent.error is not None
            replies = [sent.error.reply] * len(job.positions)
        verdicts = []
        deliveries = []
        for position, reply in zip(job.positions, replies, strict=True):
            rcpt = record.recipients[position]
            verdicts.append(
                judge(
                    position,
                    rcpt.address,
                    rcpt.retry_count,
                    reply,
                    schedule=schedule,
                    received_at=record.received_at,
                    now=now,
                    success_dsn=success_dsn,
                    warned=rcpt.delay_notified,
                )
            )
            if want_result:
                deliveries.append(
                    RecipientDelivery(
                        rcpt.address, position, reply.code, reply.enhanced, reply.text, reply.remote
                    )
                )
            if connection is not None and not reply.success:
                job.run.remote_mta[position] = connection.target.host
        return verdicts, _result(deliveries, sent, job) if want_result else None

    def _note_backoff(self, job: Job, sent: Sent) -> None:
        """A 421 or a matching 4xx lowers the destination's limits for a while."""
        reply = sent.error.reply if sent.error is not None else None
        if reply is None and sent.done is not None:
            failed = [r.final for r in sent.done.recipients if not r.delivered]
            if not failed:
                return
            reply = DeliveryReply.from_server(failed[0])
        if reply is None or reply.success:
            return
        assert job.key is not None
        limits = self._limits(job.key, job, sent.connection)
        self.limits.record_reply(limits, reply, self.clock())
        if any(self._backoff.get(key) is not None for key, _ in limits.rules):
            self._limits_cache.clear()  # lowered limits apply to the next connections now

    async def _post_delivery(
        self, job: Job, verdicts: list[Verdict], result: DeliveryResult, script: PolicyScript
    ) -> None:
        try:
            action = await call_hook(
                script,
                POST_DELIVERY.name,
                job.attempt.message_id,
                self.settings.hook_timeout,
                job.attempt,
                result,
            )
        except HookFailed:
            action = None  # the replies' own verdicts stand
        if action is not None:
            record = job.run.leased.record
            verdicts = override(
                verdicts,
                action,
                schedule=self.settings.schedule,
                retry_counts=[record.recipients[p].retry_count for p in job.positions],
                received_at=record.received_at,
                now=self.clock(),
                hold_retention=self.settings.hold_retention,
            )
        self._record_verdicts(job, verdicts)

    def _record_verdicts(self, job: Job, verdicts: list[Verdict]) -> None:
        job.run.verdicts.extend(verdicts)
        self._group_done(job.run)

    def _group_done(self, run: MessageRun) -> None:
        run.pending -= 1
        if run.pending <= 0:
            self._complete(run)

    def _give_back(self, job: Job) -> None:
        """Shutdown: an attempt never made leaves its recipients as they were."""
        self._group_done(job.run)

    # --- outcomes -------------------------------------------------------------------------

    def _complete(self, run: MessageRun) -> None:
        record = run.leased.record
        now = self.clock()
        new_records = ()
        dsn = [v for v in run.verdicts if v.dsn_action is not None]
        if dsn:
            try:
                bounce = self._bounce(run, dsn, now)
            except Exception:
                # A DSN that cannot be built must not keep the outcome from being recorded;
                # the log says which message lost its notification.
                log.exception("queue: message %s: cannot build its DSN", record.id)
                bounce = None
            if bounce is not None:
                new_records = (bounce,)
        for verdict in run.verdicts:
            if verdict.state is RecipientState.DELIVERED:
                self.delivered += 1
            elif verdict.state is RecipientState.DEFERRED:
                self.deferred += 1
            elif verdict.state is RecipientState.BOUNCED:
                self.bounced += 1
        outcome = AttemptOutcome(
            record.id,
            tuple(v.outcome() for v in run.verdicts),
            new_records,
            removal_reason="bounced" if any(v.dsn_action == "failed" for v in dsn) else "delivered",
        )
        self._finished.append(outcome)
        if not self._flushing:
            self._flushing = True
            self._spawn(self._flush())

    def _bounce(self, run: MessageRun, verdicts: list[Verdict], now: float):
        record = run.leased.record
        recipients = []
        for verdict in verdicts:
            rcpt = record.recipients[verdict.position]
            mta = run.remote_mta.get(verdict.position)
            recipients.append(
                bounces.DsnRecipient(
                    address=rcpt.address,
                    original=rcpt.params.get("ORCPT"),
                    action=verdict.dsn_action or "failed",
                    reply=verdict.reply,
                    remote_mta=f"dns; {mta}" if mta and verdict.reply.remote else None,
                    last_attempt=now,
                    will_retry_until=(
                        self.settings.schedule.expires_at(record.received_at)
                        if verdict.dsn_action == "delayed"
                        else None
                    ),
                )
            )
        return bounces.bounce_record(
            record,
            run.message_bytes(),
            recipients,
            reporting_mta=self.settings.reporting_mta,
            now=now,
            new_id=self.new_id(),
        )

    async def _flush(self) -> None:
        try:
            while self._finished:
                batch, self._finished = self._finished, []
                try:
                    await self.store.record_outcomes(self.owner, batch)
                except SpoolError as error:
                    # The leases run out and the attempts are made again: at-least-once.
                    log.error("queue: cannot record %d outcomes: %s", len(batch), error)
                for outcome in batch:
                    run = self.in_flight.pop(outcome.message_id, None)
                    if run is not None:
                        self.bytes_in_flight -= run.size
                self._room.set()
                self._wake.set()
        finally:
            self._flushing = False

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _result(deliveries: list[RecipientDelivery], sent: Sent, job: Job) -> DeliveryResult:
    connection = sent.connection
    tls = connection.tls if connection is not None else None
    return DeliveryResult(
        recipients=tuple(deliveries),
        remote_ip=connection.target.address if connection else None,
        remote_mx=connection.target.host if connection else None,
        remote_port=connection.target.port if connection else None,
        source_ip=connection.source_ip if connection else None,
        helo=job.key.helo if job.key else None,
        tls_protocol=tls.protocol if tls else None,
        tls_cipher=tls.cipher if tls else None,
        tls_verified=bool(tls and tls.verified),
        tls_failure=tls.failure if tls else None,
        tls_policy=tls.policy.mode.value if tls else None,
        tls_policy_source=tls.policy.source if tls else None,
        tls=tls,
        error=sent.error.stage if sent.error is not None else None,
        connect_seconds=sent.connect_seconds,
        seconds=sent.seconds,
        reused=sent.reused,
    )
