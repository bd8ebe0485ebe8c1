"""The plain-SMTP transaction (no TLS, no AUTH) on a raw non-blocking socket.

Same steps, checks and marks as ``session.ping``, but driven by the epoll engine
(``engine.py``) instead of asyncio: the engine hands each socket event to
``on_events``, and each reply is checked, marked and answered with the next
command straight from the read. Per ping that leaves the syscalls 1.1 itself
makes (socket, connect, recv, send, close) plus one epoll_ctl, and no coroutine,
future or callback object. This is what keeps the meter's CPU per message below
Debian's smtpping.
"""

from __future__ import annotations

import errno
import os
import select
import socket
from dataclasses import dataclass
from time import perf_counter_ns
from typing import TYPE_CHECKING, Protocol

from .replies import ReplyReader
from .result import CLOSED_CODE, PingResult, SessionPlan

if TYPE_CHECKING:
    from .worker import WorkerCursor


@dataclass(frozen=True, slots=True)
class Step:
    """One reply a plain transaction awaits, and what answers it.

    Slots, not a NamedTuple: the hot path reads a few fields per reply, and a slot
    read costs what indexing a bare tuple does, where unpacking a tuple subclass
    takes Python's slow generic path.
    """

    low: int  # lowest reply code that passes
    high: int  # highest reply code that passes
    label: str  # the failure label, in 1.1's words
    marks: int  # marks to take: 1; 0 for all but the last RCPT; 2 for the last RCPT
    # before BDAT, which has no DATA round trip, so 1.1 marks "data" right after RCPT
    is_eom: bool  # the reply to the message: its code is kept as the EOM code
    command: bytes | None  # what to send next; None at the end


_CLASS_2 = (200, 299)
_CLASS_3 = (300, 399)
_ANY = (1, 999)  # 1.1 takes any reply to the message and to QUIT

READ_SIZE = 4096  # replies are short; a longer one is simply read in several calls
WAIT_READ = select.EPOLLIN | select.EPOLLET
WAIT_WRITE = select.EPOLLIN | select.EPOLLOUT | select.EPOLLET
_READABLE = select.EPOLLIN
_NOT_WRITABLE = ~select.EPOLLOUT
_BROKEN = select.EPOLLERR | select.EPOLLHUP
_IN_PROGRESS = (errno.EINPROGRESS, errno.EAGAIN)
_NONBLOCKING_STREAM = socket.SOCK_STREAM | getattr(socket, "SOCK_NONBLOCK", 0)
# The C socket type itself: socket.socket's Python layer (io refs, close
# bookkeeping) costs more per ping than the syscalls it wraps.
_Socket = socket.SocketType
_BUFFER = bytearray(READ_SIZE)  # one engine, one thread: every read lands here first


class Watcher(Protocol):
    """What a transaction needs from the engine that runs it."""

    def watch(self, fd: int, transaction: PlainTransaction, mask: int) -> None: ...
    def rewatch(self, fd: int, mask: int) -> None: ...
    def finished(self, transaction: PlainTransaction) -> None: ...


def plan_steps(plan: SessionPlan) -> tuple[Step, ...]:
    """The replies of one plain transaction, in order, with what answers each."""
    payload = plan.payload
    rcpts = plan.rcpt_commands
    steps = [
        Step(*_CLASS_2, "BANNER", 1, False, plan.helo_command),
        Step(*_CLASS_2, plan.helo_label, 1, False, plan.mail_command),
        Step(*_CLASS_2, "MAIL FROM", 1, False, rcpts[0]),
    ]
    steps.extend(Step(*_CLASS_2, "RCPT TO", 0, False, rcpt) for rcpt in rcpts[1:])
    if payload.chunking:
        steps.append(Step(*_CLASS_2, "RCPT TO", 2, False, payload.wire))
    else:
        steps.append(Step(*_CLASS_2, "RCPT TO", 1, False, b"DATA\r\n"))
        steps.append(Step(*_CLASS_3, "DATA", 1, False, payload.wire))
    steps.append(Step(*_ANY, "EOM", 1, True, b"QUIT\r\n"))
    steps.append(Step(*_ANY, "QUIT", 1, False, None))
    return tuple(steps)


class PlainTransaction:
    """One plain transaction: connect, then each reply checked, marked and answered."""

    __slots__ = (
        "_debug",
        "_engine",
        "_quick",
        "_reader",
        "_step",
        "_steps",
        "_unsent",
        "_wants_write",
        "connected_ns",
        "fd",
        "last_activity_ns",
        "owner",
        "result",
        "sock",
        "started_ns",
    )

    def __init__(
        self, engine: Watcher, owner: WorkerCursor, steps: tuple[Step, ...], debug: bool
    ) -> None:
        self._engine = engine
        self.owner = owner
        self._steps = steps
        self._step = 0
        # Only a reply that is not one whole line needs the reader (and -d, which
        # prints every reply line); without one, on_events parses in place.
        self._debug = debug
        self._reader: ReplyReader | None = ReplyReader(debug) if debug else None
        self._unsent: memoryview | None = None
        self._wants_write = False
        self._quick = False  # connected, no reader, nothing left to send
        self.result = PingResult()
        self.sock: socket.socket | None = None
        self.fd = -1
        self.connected_ns = 0

    def start(self, family: int, sockaddr: tuple[object, ...], bind: tuple[object, ...] | None):
        """Open the socket and connect; a failure here finishes the transaction at once."""
        try:
            sock = _Socket(family, _NONBLOCKING_STREAM)
        except OSError as error:
            self._failed_early("connect", str(error))
            return
        if not _NONBLOCKING_STREAM & ~socket.SOCK_STREAM:  # pragma: no cover - not Linux
            sock.setblocking(False)
        if bind is not None:
            try:
                sock.bind(bind)
            except OSError as error:
                sock.close()
                self._failed_early("bind", str(error))
                return
        self.sock = sock
        self.fd = sock.fileno()
        self.started_ns = self.last_activity_ns = perf_counter_ns()
        error = sock.connect_ex(sockaddr)
        if error and error not in _IN_PROGRESS:
            self._connect_failed(error)
            return
        try:
            # Loopback and LAN handshakes are usually over before connect() returns;
            # asking saves waiting for epoll to say so.
            sock.getpeername()
        except OSError:
            self._wants_write = True  # the handshake is still running: writable = connected
            self._engine.watch(self.fd, self, WAIT_WRITE)
            return
        self._connected()
        self._engine.watch(self.fd, self, WAIT_READ)

    def _failed_early(self, failure: str, detail: str) -> None:
        self.result.failure, self.result.detail = failure, detail
        self._engine.finished(self)

    def _connect_failed(self, error: int) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            sock.close()
        self._failed_early("connect", os.strerror(error))

    def _connected(self) -> None:
        # 1.1: connect runs to the end of the TCP handshake; later marks count from here.
        self.connected_ns = self.last_activity_ns = now = perf_counter_ns()
        self.result.connect_ns = now - self.started_ns
        self._quick = self._reader is None

    def on_events(self, events: int) -> None:
        """React to what epoll reported for this socket.

        The usual event, one whole one-line reply on an established connection with
        nothing left to send, is handled inline: it comes seven times a ping, and
        every call and object it avoids is CPU the meter does not take from the
        server it measures. Everything else goes through ``_other_events``.
        """
        if not self._quick or events & _NOT_WRITABLE != _READABLE:
            self._other_events(events)
            return
        try:
            size = self.sock.recv_into(_BUFFER)  # type: ignore[union-attr]
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            size = 0
        data = _BUFFER
        # One line, whole, "code SP text" (RFC 5321 §4.2.1); anything else (a '-' line, a bare
        # code, garbage) goes to the shared reply parser, which this path must agree with
        # (tests/tools/test_smtpping_replies.py).
        if not (3 < size < READ_SIZE and data[3] == 32 and data.find(10, 0, size) == size - 1):
            self._read_rest(size)
            return
        try:
            code = int(data[:3])
        except ValueError:
            code = 0
        if code < 100 and not data[:3].isdigit():
            code = 0  # int() also takes " 25", "+25", "2_5": not a reply code
        step = self._steps[self._step]
        if not step.low <= code <= step.high:
            self._failed(step.label, code)
            return
        now = self.last_activity_ns = perf_counter_ns()
        marks = step.marks
        if marks:
            taken = self.result.marks
            taken.append(now - self.connected_ns)
            if marks == 2:
                taken.append(now - self.connected_ns)
        if step.is_eom:
            self.result.eom_code = code
        command = step.command
        if command is None:
            self.finish(None)
            return
        self._step += 1
        try:
            sent = self.sock.send(command)  # type: ignore[union-attr]
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.finish(CLOSED_CODE)
            return
        if sent != len(command):
            self._send_later(command, sent)

    def _other_events(self, events: int) -> None:
        if not self.connected_ns:
            if events & _BROKEN:
                error = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)  # type: ignore[union-attr]
                self._connect_failed(error or errno.ECONNRESET)
                return
            self._connected()
        elif self._unsent is not None and events & select.EPOLLOUT:
            self._send(self._unsent)
        if events & (select.EPOLLIN | _BROKEN) and self.sock is not None:
            self._read()

    def _recv(self) -> int | None:
        """Read into the shared buffer: the size (0 once the peer has closed), or None
        when there is nothing to read yet. ``on_events`` does the same inline."""
        try:
            return self.sock.recv_into(_BUFFER)  # type: ignore[union-attr]
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            return 0

    def _read(self) -> None:
        size = self._recv()
        if size is not None:
            self._read_rest(size)

    def _read_rest(self, size: int | None) -> None:
        """Feed ``size`` bytes of the buffer to the reader, then read until drained."""
        sock = self.sock
        while size is not None:
            if not size:
                self.finish(CLOSED_CODE)
                return
            reader = self._reader
            if reader is None:
                reader = self._reader = ReplyReader(self._debug)
                self._quick = False
            for code, _ in reader.feed(bytes(_BUFFER[:size])):
                if sock is not self.sock:
                    return
                self._reply(code)
            if sock is not self.sock:
                return
            if size < READ_SIZE:
                if reader.empty and not self._debug:
                    self._reader = None  # back to parsing in place
                    self._quick = self._unsent is None
                return  # drained: the next edge brings more
            size = self._recv()

    def _reply(self, code: int) -> None:
        step = self._steps[self._step]
        if not step.low <= code <= step.high:
            self._failed(step.label, code)
            return
        now = self.last_activity_ns = perf_counter_ns()
        self.result.marks.extend([now - self.connected_ns] * step.marks)
        if step.is_eom:
            self.result.eom_code = code
        command = step.command
        if command is None:
            self.finish(None)
            return
        self._step += 1
        self._send(command)

    def _send(self, data: bytes | memoryview) -> None:
        try:
            sent = self.sock.send(data)  # type: ignore[union-attr]
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.finish(CLOSED_CODE)
            return
        if sent == len(data):
            if self._unsent is not None:
                self._unsent = None
                self._quick = self._reader is None
            return
        self._send_later(data, sent)

    def _send_later(self, data: bytes | memoryview, sent: int) -> None:
        """Keep what the socket did not take; it goes out when epoll reports room."""
        self._unsent = memoryview(data)[sent:]
        self._quick = False
        if not self._wants_write:
            self._wants_write = True
            self._engine.rewatch(self.fd, WAIT_WRITE)

    def _failed(self, label: str, code: int) -> None:
        self.result.failure, self.result.code = label, code
        self.finish(code)

    def finish(self, code: int | None) -> None:
        """End the transaction: code None for success, else the failing reply code."""
        sock = self.sock
        if sock is None:
            return
        result = self.result
        if code is not None and result.failure is None:
            if not self.connected_ns:
                result.failure, result.detail = "connect", "timeout"
            else:
                result.failure, result.code = self._steps[self._step].label, code
        self.sock = None
        self._unsent = None
        self._quick = False
        sock.close()  # also takes it out of the epoll set
        self._engine.finished(self)
