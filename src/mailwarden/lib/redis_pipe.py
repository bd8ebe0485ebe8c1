"""One pipelined Redis connection per event loop for ``rate()``'s Lua script: the hot path
of the Redis rate backend, a round trip per call and nothing more.

redis-py's asyncio client costs ~70 µs a call on top of the loopback round trip (the
blocking pool's condition, a timeout per read, reply parsing in general). ``rate()`` only ever
sends ``EVALSHA`` and gets an integer or an error back, so this module writes RESP (the Redis
protocol: arrays of bulk strings, https://redis.io/docs/reference/protocol-spec/) itself on a
single connection that every session of the worker shares. Concurrent calls are pipelined:
Redis answers the commands of one connection in order, so each waiting call's future is the
oldest one when its reply line arrives. A script unknown to the server (``NOSCRIPT``, after a
restart or ``SCRIPT FLUSH``) is sent once in full with ``EVAL``, which also caches it.

``redis://`` and ``unix://`` URLs with a user, password and database are handled here; others
(``rediss://``) stay with redis-py (:func:`supported`).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["PipelinedScript", "RedisReplyError", "supported"]


class RedisReplyError(Exception):
    """Redis answered with an error (``-ERR …``)."""


def supported(url: str) -> bool:
    return urlsplit(url).scheme in ("redis", "unix")


def _command(*parts: bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


def _encode(value: object) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


class _Connection:
    """An open connection: writes go out at once, replies resolve the oldest waiting future."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.waiting: deque[asyncio.Future[bytes]] = deque()
        self.broken: BaseException | None = None
        self.task = asyncio.get_running_loop().create_task(self._read(reader))

    def send(self, wire: bytes) -> asyncio.Future[bytes]:
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.waiting.append(future)
        self.writer.write(wire)
        return future

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line.endswith(b"\r\n"):
                    raise ConnectionError("Redis closed the connection")
                if line[:1] == b"$":  # a bulk string (not from our script): skip its body
                    size = int(line[1:-2])
                    if size >= 0:
                        await reader.readexactly(size + 2)
                future = self.waiting.popleft()
                if not future.done():  # its caller may have timed out and gone
                    future.set_result(line[:-2])
        except BaseException as error:  # every waiter must hear of it, even on cancel
            self.broken = error if isinstance(error, Exception) else ConnectionError("closed")
            while self.waiting:
                future = self.waiting.popleft()
                if not future.done():
                    future.set_exception(self.broken)
            self.writer.close()

    def close(self) -> None:
        try:
            self.task.cancel()
            self.writer.close()
        except RuntimeError:
            pass  # its event loop is closed already (a test's, the CLI's): nothing left open


class PipelinedScript:
    """A Lua script run with EVALSHA over one shared, pipelined connection to ``url``."""

    def __init__(self, url: str, script: str, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        self.script = script.encode()
        self.sha = hashlib.sha1(self.script).hexdigest().encode()
        self._connection: _Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._opening: asyncio.Lock | None = None

    async def __call__(self, keys: list[str], args: list[object]) -> int:
        """The script's integer reply; RedisReplyError for an error reply, OSError or
        TimeoutError when Redis cannot be reached or does not answer within the timeout."""
        params = [_encode(len(keys)), *map(_encode, keys), *map(_encode, args)]
        try:
            async with asyncio.timeout(self.timeout):
                connection = await self._open()
                reply = await connection.send(_command(b"EVALSHA", self.sha, *params))
                if reply.startswith(b"-NOSCRIPT"):
                    reply = await connection.send(_command(b"EVAL", self.script, *params))
        except TimeoutError:
            self.close()  # a Redis that hangs: the next call connects afresh
            raise
        if reply[:1] == b"-":
            raise RedisReplyError(reply[1:].decode("utf-8", "replace"))
        if reply[:1] != b":":
            raise RedisReplyError(f"unexpected reply {reply[:40]!r}")
        return int(reply[1:])

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a new loop (tests, the CLI): its own connection
            self._connection, self._loop, self._opening = None, loop, asyncio.Lock()
        connection = self._connection
        if connection is not None and connection.broken is None:
            return connection
        assert self._opening is not None
        async with self._opening:  # one connect for a burst of first calls
            connection = self._connection
            if connection is None or connection.broken is not None:
                connection = self._connection = await self._connect()
        return connection

    async def _connect(self) -> _Connection:
        parts = urlsplit(self.url)
        if parts.scheme == "unix":
            reader, writer = await asyncio.open_unix_connection(parts.path)
            db = parse_qs(parts.query).get("db", ["0"])[0]
        else:
            reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 6379)
            db = parts.path.strip("/") or "0"
        connection = _Connection(reader, writer)
        setup = []
        if parts.password is not None:
            user = unquote(parts.username) if parts.username else "default"
            setup.append(_command(b"AUTH", user.encode(), unquote(parts.password).encode()))
        if db != "0":
            setup.append(_command(b"SELECT", db.encode()))
        for wire in setup:
            reply = await connection.send(wire)
            if reply[:1] == b"-":
                connection.close()
                raise RedisReplyError(reply[1:].decode("utf-8", "replace"))
        return connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
