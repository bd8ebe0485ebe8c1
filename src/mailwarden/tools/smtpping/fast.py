"""The plain-SMTP transaction as a callback state machine, for rate mode and -P in the thousands.

Same steps, checks and marks as ``session.ping`` (which still handles STARTTLS, AUTH
and implicit TLS), but each reply drives the next command straight from
``data_received``: one future per ping instead of a coroutine wake-up per phase,
and reply timeouts checked by one sweeper task per event loop rather than a timer
per command. This is what keeps the meter's CPU per message below Debian's.
"""

from __future__ import annotations

import asyncio
from time import perf_counter_ns

from .session import CLOSED_CODE, TIMEOUT_CODE, PingResult, ReplyProtocol, SessionPlan

# A step: (bytes to send once the previous reply is in, or None for the banner;
# the reply class that passes, 0 for any reply; failure label; take a mark).
Step = tuple[bytes | None, int, str, bool]
SWEEP_INTERVAL_S = 0.25


def plan_steps(plan: SessionPlan) -> tuple[Step, ...]:
    steps: list[Step] = [(None, 2, "BANNER", True), (plan.helo_command, 2, plan.helo_label, True)]
    steps.append((plan.mail_command, 2, "MAIL FROM", True))
    last = len(plan.rcpt_commands) - 1
    steps.extend(
        (rcpt, 2, "RCPT TO", index == last) for index, rcpt in enumerate(plan.rcpt_commands)
    )
    if not plan.payload.chunking:
        steps.append((b"DATA\r\n", 3, "DATA", True))
    steps.append((plan.payload.wire, 0, "EOM", True))
    steps.append((b"QUIT\r\n", 0, "QUIT", True))
    return tuple(steps)


class Sweeper:
    """Fails transactions that waited longer than the reply timeout for a reply."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout_s: float) -> None:
        self.active: set[FastTransaction] = set()
        self._timeout_ns = int(timeout_s * 1e9)
        self._task = loop.create_task(self._sweep())

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            limit = perf_counter_ns() - self._timeout_ns
            for transaction in [t for t in self.active if t.last_activity_ns < limit]:
                transaction.finish(TIMEOUT_CODE)

    def close(self) -> None:
        self._task.cancel()


_sweepers: dict[asyncio.AbstractEventLoop, Sweeper] = {}


def sweeper_for(loop: asyncio.AbstractEventLoop, timeout_s: float) -> Sweeper:
    sweeper = _sweepers.get(loop)
    if sweeper is None or sweeper._task.done():
        sweeper = _sweepers[loop] = Sweeper(loop, timeout_s)
    return sweeper


class FastTransaction(ReplyProtocol):
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        plan: SessionPlan,
        steps: tuple[Step, ...],
        sweeper: Sweeper,
    ) -> None:
        super().__init__(loop, plan.debug)
        self.result = PingResult()
        self.done: asyncio.Future[PingResult] = loop.create_future()
        self._steps = steps
        self._step = 0
        self._sweeper = sweeper
        self.connected_ns = 0
        self.last_activity_ns = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.connected_ns = self.last_activity_ns = perf_counter_ns()
        self.transport = transport  # type: ignore[assignment]
        self._sweeper.active.add(self)

    def _deliver(self, reply: tuple[int, bytes]) -> None:
        if self.done.done():
            return
        code = reply[0]
        _, expected, label, marked = self._steps[self._step]
        if (expected and code // 100 != expected) or code <= 0:
            self.result.failure, self.result.code = label, code
            self.finish(code)
            return
        now = perf_counter_ns()
        self.last_activity_ns = now
        marks = self.result.marks
        if marked:
            marks.append(now - self.connected_ns)
        if label == "EOM":
            self.result.eom_code = code
        self._step += 1
        if self._step == len(self._steps):
            self.finish(None)
            return
        command = self._steps[self._step][0]
        if len(marks) == 4 and self._steps[self._step][2] == "EOM":
            # CHUNKING: no DATA round trip, 1.1 marks "data" right after RCPT.
            marks.append(now - self.connected_ns)
        self.transport.write(command)  # type: ignore[union-attr, arg-type]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.result.failure = self._steps[self._step][2]
            self.result.code = CLOSED_CODE
            self.finish(CLOSED_CODE)

    def eof_received(self) -> bool | None:
        self.connection_lost(None)
        return None

    def finish(self, code: int | None) -> None:
        """End the transaction: code None for success, else the failing reply code."""
        if self.done.done():
            return
        if code is not None and self.result.failure is None:
            self.result.failure, self.result.code = self._steps[self._step][2], code
        self._sweeper.active.discard(self)
        if self.transport is not None:
            self.transport.close()
        self.done.set_result(self.result)


async def fast_ping(sockaddr: tuple[object, ...], plan: SessionPlan, steps: tuple[Step, ...]):
    """One plain transaction (no TLS, no AUTH); never raises for network trouble."""
    loop = asyncio.get_running_loop()
    transaction = FastTransaction(loop, plan, steps, sweeper_for(loop, plan.timeout_s))
    started = perf_counter_ns()
    try:
        async with asyncio.timeout(plan.timeout_s):
            await loop.create_connection(
                lambda: transaction,
                host=sockaddr[0],
                port=sockaddr[1],
                local_addr=plan.bind_address,
            )
    except (OSError, TimeoutError) as error:
        result = transaction.result
        result.failure, result.detail = "connect", str(error) or "timeout"
        return result
    transaction.result.connect_ns = transaction.connected_ns - started
    return await transaction.done
