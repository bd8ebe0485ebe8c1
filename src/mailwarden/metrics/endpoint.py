"""The ``[metrics] listen`` HTTP listener: ``GET /metrics`` and nothing else.

It runs inside the node's own loop (the supervisor's selector, or a lone worker's event loop)
instead of a thread: the supervisor forks workers, and a fork while another thread holds a lock
(logging's, for one) would leave the child stuck on it. The loop tells it which socket is
readable through the narrow :class:`Watcher` protocol.

A request is read without blocking (at most ``MAX_REQUEST`` bytes, its header only); the answer
is written with a short time-out, so a client that stops reading holds the node's loop for at
most ``WRITE_TIMEOUT`` seconds; one that never finishes its request is dropped after
``REQUEST_TIMEOUT`` seconds (see :meth:`MetricsEndpoint.expire`).
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable
from typing import Protocol

from prometheus_client import CONTENT_TYPE_LATEST

from mailwarden.config.listen import parse_listen_address

MAX_REQUEST = 8192
REQUEST_TIMEOUT = 10.0
WRITE_TIMEOUT = 2.0
MAX_CLIENTS = 64


class Watcher(Protocol):
    """What the endpoint needs from a loop: call ``callback`` when ``fd`` is readable."""

    def watch(self, fd: int, callback: Callable[[], None]) -> None: ...

    def unwatch(self, fd: int) -> None: ...


def response(request: bytes, render: Callable[[], bytes]) -> bytes:
    """The whole HTTP/1.0 answer to one request's header (RFC 9112 §3: the request line)."""
    line = request.split(b"\r\n", 1)[0].split(b"\n", 1)[0]
    parts = line.split()
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
        return _answer(400, "Bad Request", b"bad request\n")
    method, target = parts[0], parts[1].split(b"?", 1)[0]
    if target != b"/metrics":
        return _answer(404, "Not Found", b"only /metrics is served here\n")
    if method not in (b"GET", b"HEAD"):
        return _answer(405, "Method Not Allowed", b"GET /metrics\n", b"Allow: GET, HEAD\r\n")
    body = render()
    answer = _answer(200, "OK", body, content_type=CONTENT_TYPE_LATEST)
    if method == b"HEAD":
        return answer[: len(answer) - len(body)]
    return answer


def _answer(
    status: int,
    reason: str,
    body: bytes,
    extra: bytes = b"",
    content_type: str = "text/plain; charset=utf-8",
) -> bytes:
    head = (
        f"HTTP/1.0 {status} {reason}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n"
    ).encode()
    return head + extra + b"\r\n" + body


class MetricsEndpoint:
    """Accepts on ``sock`` (bound and listening) and answers each client once, then closes."""

    def __init__(self, sock: socket.socket, render: Callable[[], bytes], watcher: Watcher) -> None:
        self.sock = sock
        self.render = render
        self.watcher = watcher
        self._clients: dict[int, tuple[socket.socket, bytearray, float]] = {}
        sock.setblocking(False)
        watcher.watch(sock.fileno(), self._accept)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()[:2]
        return host, port

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # EMFILE and the like: try again at the next readiness
                return
            if len(self._clients) >= MAX_CLIENTS:
                client.close()
                continue
            client.setblocking(False)
            fd = client.fileno()
            self._clients[fd] = (client, bytearray(), time.monotonic())
            self.watcher.watch(fd, lambda fd=fd: self._read(fd))  # type: ignore[misc]

    def _read(self, fd: int) -> None:
        client, buffer, _ = self._clients[fd]
        try:
            chunk = client.recv(MAX_REQUEST)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._drop(fd)
            return
        buffer += chunk
        if b"\r\n\r\n" not in buffer and b"\n\n" not in buffer:
            if len(buffer) >= MAX_REQUEST:
                self._reply(fd, _answer(431, "Request Header Fields Too Large", b"too large\n"))
            return
        try:
            answer = response(bytes(buffer), self.render)
        except Exception as error:  # a broken statistics file must not stop the node's loop
            answer = _answer(500, "Internal Server Error", f"{error}\n".encode())
        self._reply(fd, answer)

    def _reply(self, fd: int, answer: bytes) -> None:
        client = self._clients[fd][0]
        with contextlib.suppress(OSError):
            client.settimeout(WRITE_TIMEOUT)
            client.sendall(answer)
        self._drop(fd)

    def _drop(self, fd: int) -> None:
        client, _, _ = self._clients.pop(fd)
        self.watcher.unwatch(fd)
        client.close()

    def expire(self) -> None:
        """Drop clients that have not finished their request within REQUEST_TIMEOUT."""
        limit = time.monotonic() - REQUEST_TIMEOUT
        for fd in [fd for fd, (_, _, since) in self._clients.items() if since < limit]:
            self._drop(fd)

    def sockets(self) -> list[socket.socket]:
        """The listening socket and every client's (a forked child closes its copies)."""
        return [self.sock, *(client for client, _, _ in self._clients.values())]

    def close(self) -> None:
        for fd in list(self._clients):
            self._drop(fd)
        self.watcher.unwatch(self.sock.fileno())
        self.sock.close()


def bind(address: str) -> socket.socket:
    """A listening socket on ``address`` (``host:port``, ``[v6]:port``). Raises OSError."""
    host, port = parse_listen_address(address)
    try:
        family, kind, proto, _, where = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as error:
        raise OSError(error.errno, f"cannot resolve {host}: {error.strerror}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(where)
        sock.listen(16)
    except BaseException:
        sock.close()
        raise
    return sock
