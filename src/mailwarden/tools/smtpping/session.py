"""One timed SMTP transaction: connect, banner, HELO, MAIL, RCPT, DATA, QUIT.

Timings follow smtpping 1.1: ``connect`` runs from just before connect() to the
end of the TCP handshake; every later mark is taken when the reply of its phase
has arrived and is counted from the end of the TCP connect. A TLS handshake
(implicit TLS) therefore lands in ``banner``, STARTTLS and AUTH between
``helo``... and ``mailfrom`` as described in docs/smtpping.md.

Nothing here raises for network trouble: every failure comes back as a
``PingResult`` naming the phase and the reply code (0 when the server closed the
connection, -1 on timeout).
"""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl
from collections import deque
from time import perf_counter_ns

from .replies import ReplyReader
from .result import CLOSED_CODE, TIMEOUT_CODE, PingResult, SessionPlan


class ReplyProtocol(asyncio.Protocol):
    """Collects complete SMTP replies (RFC 5321 §4.2: the last line has no '-')."""

    def __init__(self, loop: asyncio.AbstractEventLoop, debug: bool) -> None:
        self._loop = loop
        self._reader = ReplyReader(debug)
        self._replies: deque[tuple[int, bytes]] = deque()
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self._closed = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        for reply in self._reader.feed(data):
            self._deliver(reply)

    def _deliver(self, reply: tuple[int, bytes]) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            self._waiter = None
            waiter.set_result(reply)
        else:
            self._replies.append(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result((CLOSED_CODE, b""))

    def eof_received(self) -> bool | None:
        self.connection_lost(None)
        return None

    def next_reply(self) -> asyncio.Future[tuple[int, bytes]]:
        """A future for the next complete reply; (0, b'') once the peer has closed."""
        waiter = self._loop.create_future()
        if self._replies:
            waiter.set_result(self._replies.popleft())
        elif self._closed:
            waiter.set_result((CLOSED_CODE, b""))
        else:
            self._waiter = waiter
        return waiter


async def _command(
    protocol: ReplyProtocol, data: bytes, timer: asyncio.Timeout, timeout_s: float
) -> tuple[int, bytes]:
    timer.reschedule(protocol._loop.time() + timeout_s)
    protocol.transport.write(data)  # type: ignore[union-attr]
    return await protocol.next_reply()


def _auth_mechanism(ehlo_reply: bytes, wanted: str | None) -> str:
    if wanted:
        return wanted
    for line in ehlo_reply.upper().splitlines():
        words = line[4:].replace(b"=", b" ").split()
        if words and words[0] == b"AUTH":
            for mech in (b"PLAIN", b"LOGIN"):
                if mech in words[1:]:
                    return mech.decode()
    return "PLAIN"


async def _authenticate(
    protocol: ReplyProtocol, plan: SessionPlan, ehlo_reply: bytes, timer: asyncio.Timeout
) -> int:
    """Run AUTH (RFC 4954); return the final reply code (235 on success)."""
    assert plan.auth is not None
    user, password = plan.auth
    mech = _auth_mechanism(ehlo_reply, plan.auth_mech)
    if mech == "PLAIN":
        token = base64.b64encode(f"\0{user}\0{password}".encode())
        code, _ = await _command(protocol, b"AUTH PLAIN " + token + b"\r\n", timer, plan.timeout_s)
        return code
    code, _ = await _command(protocol, b"AUTH LOGIN\r\n", timer, plan.timeout_s)
    for secret in (user, password):
        if code != 334:
            return code
        line = base64.b64encode(secret.encode()) + b"\r\n"
        code, _ = await _command(protocol, line, timer, plan.timeout_s)
    return code


async def open_connection(
    sockaddr: tuple[object, ...], family: int, plan: SessionPlan, result: PingResult
) -> tuple[ReplyProtocol, int] | None:
    """Connect and time it; None (with result.failure set) when that fails."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    if plan.bind_address is not None:
        try:
            sock.bind(plan.bind_address)
        except OSError as error:
            sock.close()
            result.failure, result.detail = "bind", str(error)
            return None
    started = perf_counter_ns()
    try:
        async with asyncio.timeout(plan.timeout_s):
            await loop.sock_connect(sock, sockaddr)
    except (OSError, TimeoutError) as error:
        sock.close()
        result.failure, result.detail = "connect", str(error) or "timeout"
        return None
    connected = perf_counter_ns()
    result.connect_ns = connected - started
    protocol = ReplyProtocol(loop, plan.debug)
    try:
        async with asyncio.timeout(plan.timeout_s):
            await loop.create_connection(
                lambda: protocol,
                sock=sock,
                ssl=plan.tls_context if plan.implicit_tls else None,
                server_hostname=plan.server_hostname if plan.implicit_tls else None,
            )
    except (OSError, TimeoutError, ssl.SSLError) as error:
        sock.close()
        result.failure, result.detail = "TLS", str(error) or "timeout"
        return None
    return protocol, connected


async def ping(sockaddr: tuple[object, ...], family: int, plan: SessionPlan) -> PingResult:
    """Run one transaction against sockaddr and return what it measured."""
    result = PingResult()
    opened = await open_connection(sockaddr, family, plan, result)
    if opened is None:
        return result
    protocol, connected = opened
    marks = result.marks
    step = "BANNER"
    try:
        async with asyncio.timeout(plan.timeout_s) as timer:
            code, _ = await protocol.next_reply()
            if code // 100 != 2:
                return _failed(result, step, code)
            marks.append(perf_counter_ns() - connected)

            step = plan.helo_label
            code, ehlo_reply = await _command(protocol, plan.helo_command, timer, plan.timeout_s)
            if code // 100 != 2:
                return _failed(result, step, code)
            if plan.starttls:
                step = "STARTTLS"
                code, _ = await _command(protocol, b"STARTTLS\r\n", timer, plan.timeout_s)
                if code != 220:
                    return _failed(result, step, code)
                step = "TLS"
                loop = protocol._loop
                new_transport = await loop.start_tls(
                    protocol.transport,  # type: ignore[arg-type]
                    protocol,
                    plan.tls_context,  # type: ignore[arg-type]
                    server_hostname=plan.server_hostname,
                )
                protocol.transport = new_transport  # type: ignore[assignment]
                step = plan.helo_label
                code, ehlo_reply = await _command(
                    protocol, plan.helo_command, timer, plan.timeout_s
                )
                if code // 100 != 2:
                    return _failed(result, step, code)
            marks.append(perf_counter_ns() - connected)
            if plan.auth is not None:
                step = "AUTH"
                code = await _authenticate(protocol, plan, ehlo_reply, timer)
                if code != 235:
                    return _failed(result, step, code)

            step = "MAIL FROM"
            code, _ = await _command(protocol, plan.mail_command, timer, plan.timeout_s)
            if code // 100 != 2:
                return _failed(result, step, code)
            marks.append(perf_counter_ns() - connected)

            step = "RCPT TO"
            for rcpt in plan.rcpt_commands:
                code, _ = await _command(protocol, rcpt, timer, plan.timeout_s)
                if code // 100 != 2:
                    return _failed(result, step, code)
            marks.append(perf_counter_ns() - connected)

            payload = plan.payload
            if not payload.chunking:
                step = "DATA"
                code, _ = await _command(protocol, b"DATA\r\n", timer, plan.timeout_s)
                if code // 100 != 3:
                    return _failed(result, step, code)
            # With BDAT there is no DATA round trip: 1.1 marks it right after RCPT.
            marks.append(perf_counter_ns() - connected)

            # 1.1 takes any reply to the message as its end (EOM); the code is kept.
            step = "EOM"
            code, _ = await _command(protocol, payload.wire, timer, plan.timeout_s)
            if code <= 0:
                return _failed(result, step, code)
            result.eom_code = code
            marks.append(perf_counter_ns() - connected)

            step = "QUIT"
            code, _ = await _command(protocol, b"QUIT\r\n", timer, plan.timeout_s)
            if code <= 0:
                return _failed(result, step, code)
            marks.append(perf_counter_ns() - connected)
            return result
    except TimeoutError:
        return _failed(result, step, TIMEOUT_CODE)
    except (OSError, ssl.SSLError) as error:
        result.detail = str(error)
        return _failed(result, step, CLOSED_CODE)
    finally:
        if protocol.transport is not None:
            protocol.transport.close()


def _failed(result: PingResult, step: str, code: int) -> PingResult:
    result.failure = step
    result.code = code
    return result
