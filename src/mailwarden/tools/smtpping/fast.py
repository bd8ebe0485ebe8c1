"""The plain-SMTP transaction on raw non-blocking sockets, for rate mode and -P in the thousands.

Same steps, checks and marks as ``session.ping`` (which still handles STARTTLS, AUTH
and implicit TLS), but without asyncio transports: every plain socket of an event
loop sits in one edge-triggered epoll set, whose descriptor is the only thing the
event loop watches. One wake-up of the loop drains every ready socket in a plain
Python loop, each reply sends the next command straight from the read, and reply
and connect timeouts are checked by one sweeper task per loop. Per ping that leaves
one future and the syscalls 1.1 itself makes (socket, connect, recv, send, close).
This is what keeps the meter's CPU per message below Debian's.
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
from time import perf_counter_ns

from .replies import ReplyReader
from .session import CLOSED_CODE, TIMEOUT_CODE, PingResult, SessionPlan

# A step: (bytes to send once the previous reply is in, or None for the banner;
# the reply class that passes, 0 for any reply; failure label; take a mark).
Step = tuple[bytes | None, int, str, bool]
SWEEP_INTERVAL_S = 0.25
READ_SIZE = 65536
_EPOLL_FLAGS = select.EPOLLIN | select.EPOLLOUT | select.EPOLLET
_BROKEN = select.EPOLLERR | select.EPOLLHUP
_NONBLOCKING_STREAM = socket.SOCK_STREAM | getattr(socket, "SOCK_NONBLOCK", 0)


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


class Poller:
    """The epoll set of one event loop, and the sweeper that times out its transactions."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout_s: float) -> None:
        self.loop = loop
        self.epoll = select.epoll()
        self.transactions: dict[int, FastTransaction] = {}
        self._timeout_ns = int(timeout_s * 1e9)
        loop.add_reader(self.epoll.fileno(), self._dispatch)
        self._task = loop.create_task(self._sweep())

    def _dispatch(self) -> None:
        transactions = self.transactions
        for fd, events in self.epoll.poll(0):
            transaction = transactions.get(fd)
            if transaction is not None:
                transaction.on_events(events)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            limit = perf_counter_ns() - self._timeout_ns
            for transaction in [
                t for t in self.transactions.values() if t.last_activity_ns < limit
            ]:
                transaction.finish(TIMEOUT_CODE)

    @property
    def usable(self) -> bool:
        return not self.loop.is_closed() and not self._task.done()

    def close(self) -> None:
        self._task.cancel()
        if not self.loop.is_closed():
            self.loop.remove_reader(self.epoll.fileno())
        self.epoll.close()


_pollers: dict[asyncio.AbstractEventLoop, Poller] = {}


def poller_for(loop: asyncio.AbstractEventLoop, timeout_s: float) -> Poller:
    poller = _pollers.get(loop)
    if poller is None or not poller.usable:
        for old_loop, old in list(_pollers.items()):
            if not old.usable:
                old.close()
                del _pollers[old_loop]
        poller = _pollers[loop] = Poller(loop, timeout_s)
    return poller


class FastTransaction:
    """One plain transaction: connect, then each reply checked, marked and answered."""

    __slots__ = (
        "_poller",
        "_reader",
        "_step",
        "_steps",
        "_unsent",
        "connected_ns",
        "done",
        "fd",
        "last_activity_ns",
        "result",
        "sock",
        "started_ns",
    )

    def __init__(self, poller: Poller, plan: SessionPlan, steps: tuple[Step, ...]) -> None:
        self._poller = poller
        self._steps = steps
        self._reader = ReplyReader(plan.debug)
        self._step = 0
        self._unsent: memoryview | None = None
        self.result = PingResult()
        self.done: asyncio.Future[PingResult] = poller.loop.create_future()
        self.sock: socket.socket | None = None
        self.fd = -1
        self.connected_ns = 0
        self.started_ns = 0
        self.last_activity_ns = 0

    def start(self, family: int, sockaddr: tuple[object, ...], bind: tuple[object, ...] | None):
        """Open the socket and start connecting; failures end the transaction at once."""
        result = self.result
        try:
            sock = socket.socket(family, _NONBLOCKING_STREAM)
        except OSError as error:
            result.failure, result.detail = "connect", str(error)
            self.done.set_result(result)
            return
        if not _NONBLOCKING_STREAM & ~socket.SOCK_STREAM:  # pragma: no cover - not Linux
            sock.setblocking(False)
        if bind is not None:
            try:
                sock.bind(bind)
            except OSError as error:
                sock.close()
                result.failure, result.detail = "bind", str(error)
                self.done.set_result(result)
                return
        self.sock = sock
        self.fd = fd = sock.fileno()
        self.started_ns = self.last_activity_ns = perf_counter_ns()
        error = sock.connect_ex(sockaddr)
        if error and error != 115 and error != 11:  # EINPROGRESS, EAGAIN: in progress
            self._connect_failed(error)
            return
        self._poller.transactions[fd] = self
        self._poller.epoll.register(fd, _EPOLL_FLAGS)

    def _connect_failed(self, error: int) -> None:
        result = self.result
        result.failure, result.detail = "connect", os.strerror(error)
        self._close()
        self.done.set_result(result)

    def on_events(self, events: int) -> None:
        if not self.connected_ns:
            if events & _BROKEN:
                sock = self.sock
                error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)  # type: ignore[union-attr]
                self._poller.transactions.pop(self.fd, None)
                self._connect_failed(error or 104)  # ECONNRESET if the kernel says nothing
                return
            # 1.1: connect runs to the end of the TCP handshake; later marks count from here.
            self.connected_ns = self.last_activity_ns = now = perf_counter_ns()
            self.result.connect_ns = now - self.started_ns
        elif self._unsent is not None and events & select.EPOLLOUT:
            self._send(self._unsent)
        if events & (select.EPOLLIN | _BROKEN):
            self._read()

    def _read(self) -> None:
        sock = self.sock
        while not self.done.done():
            try:
                data = sock.recv(READ_SIZE)  # type: ignore[union-attr]
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                self.finish(CLOSED_CODE)
                return
            self._replies(data)
            if len(data) < READ_SIZE:
                return  # the socket is drained: the next edge brings more

    def _replies(self, data: bytes) -> None:
        """Act on each complete reply in ``data`` (and what came before it)."""
        for code, _ in self._reader.feed(data):
            if self.done.done():
                return
            self._reply(code)

    def _reply(self, code: int) -> None:
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
        command, _, next_label, _ = self._steps[self._step]
        if len(marks) == 4 and next_label == "EOM":
            # CHUNKING: no DATA round trip, 1.1 marks "data" right after RCPT.
            marks.append(now - self.connected_ns)
        self._send(command)  # type: ignore[arg-type]

    def _send(self, data: bytes | memoryview) -> None:
        try:
            sent = self.sock.send(data)  # type: ignore[union-attr]
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.finish(CLOSED_CODE)
            return
        # The rest goes out when epoll reports room again (edge-triggered EPOLLOUT).
        self._unsent = memoryview(data)[sent:] if sent < len(data) else None

    def finish(self, code: int | None) -> None:
        """End the transaction: code None for success, else the failing reply code."""
        if self.done.done():
            return
        result = self.result
        if code is not None and result.failure is None:
            if not self.connected_ns:
                result.failure, result.detail = "connect", "timeout"
            else:
                result.failure, result.code = self._steps[self._step][2], code
        self._poller.transactions.pop(self.fd, None)
        self._close()
        self.done.set_result(result)

    def _close(self) -> None:
        if self.sock is not None:
            self.sock.close()  # also takes it out of the epoll set
            self.sock = None
        self._unsent = None


async def fast_ping(
    sockaddr: tuple[object, ...], family: int, plan: SessionPlan, steps: tuple[Step, ...]
) -> PingResult:
    """One plain transaction (no TLS, no AUTH); never raises for network trouble."""
    loop = asyncio.get_running_loop()
    transaction = FastTransaction(poller_for(loop, plan.timeout_s), plan, steps)
    transaction.start(family, sockaddr, plan.bind_address)
    try:
        return await transaction.done
    except asyncio.CancelledError:
        transaction.finish(CLOSED_CODE)
        raise
