"""``await rate(namespace, key, limit, interval)``: sliding-window rate limits for scripts.

::

    from mailwarden.lib import rate
    from mailwarden.policy.actions import Defer

    async def mail_from(conn, tx, sender):
        if not await rate("client-ip", conn.remote_ip, 100, 60):
            return Defer("Too many messages, slow down", code=451, enhanced="4.7.1")

**Semantics: the sliding-window counter.** Time is cut into windows of ``interval`` seconds
aligned on the epoch (window ``i`` is ``[i·interval, (i+1)·interval)``). For each key the
backend keeps the number of events counted in the current window (``current``) and in the one
before (``previous``). At time ``now``, with ``f`` the fraction of the current window that has
passed, the number of events in the last ``interval`` seconds is estimated as::

    estimate = previous · (1 − f) + current

A call with ``count ≥ 1`` is allowed when ``estimate + count ≤ limit``; only an allowed call is
counted (``current += count``), so a client that keeps retrying gets through again as the
window slides, at the limit's pace. ``count=0`` counts nothing and answers whether one more
event would still fit (``estimate < limit``). See :func:`estimate_error` for how far the
estimate can be from the exact count; the state per key is four numbers whatever the limit.

Backends (``[library] rate_backend``): ``"local"``, a table in a memory-mapped file under
``node.data_dir/library/`` shared by every worker process of the node (each bucket of 16 keys
locked with an fcntl byte-range lock while a call updates it: about 5 µs per call, no system
call but the two for the lock); ``"redis"``, one Lua script per call (atomic, cluster-wide,
Redis's own clock).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import math
import mmap
import os
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from mailwarden.lib import redis_pipe
from mailwarden.lib.backends import BackendError, RedisConnection, library_dir
from mailwarden.lib.redis_pipe import PipelinedScript

if TYPE_CHECKING:
    from mailwarden.config.library import LibrarySettings

__all__ = [
    "LocalRateLimiter",
    "LocalRateTable",
    "RateLimiter",
    "RedisRateLimiter",
    "configure",
    "decide",
    "estimate_error",
    "rate",
    "rate_reset",
    "use",
]

log = logging.getLogger("mailwarden.lib")

Clock = Callable[[], float]

# -- the window arithmetic, shared by the local table (the Lua script mirrors it) -----------


def decide(
    stored: tuple[float, int, int, int] | None,
    now: float,
    limit: int,
    interval: float,
    count: int,
) -> tuple[bool, tuple[float, int, int, int]]:
    """One call on a key's state ``(interval, window, previous, current)`` (None: unseen).
    Returns whether it is allowed and the state to keep (with the call counted if it was)."""
    index = math.floor(now / interval)
    window, previous, current = index, 0, 0
    if stored is not None and stored[0] == interval:
        _, last, last_previous, last_current = stored
        if index <= last:  # the same window, or the clock went back: stay in it
            window, previous, current = last, last_previous, last_current
        elif index == last + 1:
            previous = last_current
    # A key called with another interval than before starts afresh (it is a new limit).
    passed = min(max((now - window * interval) / interval, 0.0), 1.0)
    estimate = previous * (1.0 - passed) + current
    if count == 0:
        return estimate < limit, (interval, window, previous, current)
    allowed = estimate + count <= limit
    if allowed:
        current += count
    return allowed, (interval, window, previous, current)


def estimate_error(previous: int, passed: float) -> tuple[float, float]:
    """How far the estimate can be from the exact number of events counted in the last
    ``interval`` seconds, as ``(over, under)``: it can count up to ``previous · (1 − passed)``
    events too many (all of the previous window's events were older than ``interval``) or
    ``previous · passed`` too few (all were at its very end). Hence a limit may admit up to
    ``limit · (1 + passed) < 2 · limit`` events in some ``interval``-long span and, at most
    ``limit`` in any aligned window; with evenly spread traffic the error is close to 0."""
    return previous * (1.0 - passed), previous * passed


def _check(namespace: object, key: object, limit: object, interval: object, count: object) -> None:
    for name, value in (("namespace", namespace), ("key", key)):
        if type(value) is not str or not value:
            raise TypeError(f"rate(): {name} must be a non-empty str, got {value!r}")
    if type(limit) is not int or limit < 0:
        raise ValueError(f"rate(): limit must be an int >= 0, got {limit!r}")
    # From a millisecond: the Lua script passes window numbers to Redis with 14 digits.
    if type(interval) not in (int, float) or not 0.001 <= interval < 1e9:  # type: ignore[operator]
        raise ValueError(
            f"rate(): interval must be a number of seconds from 0.001, got {interval!r}"
        )
    if type(count) is not int or count < 0:
        raise ValueError(f"rate(): count must be an int >= 0, got {count!r}")


def _digest(namespace: str, key: str) -> bytes:
    # Length-prefixed, so ("a:b", "c") and ("a", "b:c") differ. 128 bits: a collision between
    # two live keys is as likely as guessing a random 128-bit number.
    text = f"{len(namespace)}:{namespace}:{key}".encode("utf-8", "surrogatepass")
    digest = hashlib.blake2b(text, digest_size=16).digest()
    return digest if digest != _EMPTY else b"\x01" + digest[1:]


# -- the local table ------------------------------------------------------------------------

_MAGIC = b"MWRATE01"
_HEADER = struct.Struct("<8sQ")  # magic, slots
_HEADER_BYTES = 64
_SLOT = struct.Struct("<16sdqqqd")  # digest, interval, window, previous, current, expires
_SLOT_BYTES = 64
_BUCKET_SLOTS = 16
_BUCKET_BYTES = _SLOT_BYTES * _BUCKET_SLOTS
_EMPTY = bytes(16)
_EXPIRES = struct.Struct("<d")
_EXPIRES_AT = 48  # offset of ``expires`` in a slot


class LocalRateTable:
    """Every key's window state in one memory-mapped file, shared by the processes that open
    it: ``slots`` slots of 64 bytes in buckets of 16, a key's bucket chosen by its digest.

    A call locks its bucket (fcntl byte-range lock, released by the kernel if the process
    dies holding it), reads and writes the slot in the mapping, unlocks: no read or write
    system call, no page written on purpose (the kernel writes the dirty pages back in the
    background; after a crash of the machine the counts may be a little old, never torn into
    a wrong key, as slots are found by digest). A new key takes a free or expired slot of its
    bucket; when all 16 are live the one that expires first is evicted (that key starts again
    from zero, which admits more than its limit), and the node logs it once a minute.

    The file is named after its size, so changing ``rate_slots`` starts a new file instead of
    resizing one another process maps.
    """

    def __init__(self, path: Path, slots: int, clock: Clock = time.time) -> None:
        self.path = path
        self.buckets = max(1, slots // _BUCKET_SLOTS)
        self.clock = clock
        self.evictions = 0
        self._last_eviction_log = -math.inf
        size = _HEADER_BYTES + self.buckets * _BUCKET_BYTES
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            self._initialise(size)
            self._map = mmap.mmap(self._fd, size)
        except BaseException:
            os.close(self._fd)
            raise

    def _initialise(self, size: int) -> None:
        fcntl.lockf(self._fd, fcntl.LOCK_EX)  # the first opener writes the header
        try:
            found = os.fstat(self._fd).st_size
            slots = self.buckets * _BUCKET_SLOTS
            if found == 0:
                os.ftruncate(self._fd, size)
                os.pwrite(self._fd, _HEADER.pack(_MAGIC, slots), 0)
                return
            magic, kept = _HEADER.unpack(os.pread(self._fd, _HEADER.size, 0))
            if found != size or magic != _MAGIC or kept != slots:
                raise BackendError(
                    f"rate table {self.path}: expected {slots} slots ({size} bytes), found "
                    f"{found} bytes with header {magic!r}/{kept}; remove the file to start afresh"
                )
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        with contextlib.suppress(BufferError, ValueError):
            self._map.close()
        with contextlib.suppress(OSError):
            os.close(self._fd)

    def hit(self, namespace: str, key: str, limit: int, interval: float, count: int) -> bool:
        digest = _digest(namespace, key)
        start = _HEADER_BYTES + int.from_bytes(digest[8:], "little") % self.buckets * _BUCKET_BYTES
        fcntl.lockf(self._fd, fcntl.LOCK_EX, _BUCKET_BYTES, start)
        try:
            now = self.clock()
            slot = self._find(digest, start)
            stored = None
            if slot is not None:
                _, *fields = _SLOT.unpack_from(self._map, slot)
                stored = (fields[0], fields[1], fields[2], fields[3])
            allowed, state = decide(stored, now, limit, interval, count)
            if allowed and count:
                if slot is None:
                    slot = self._free_slot(start, now)
                expires = (state[1] + 2) * interval  # past it, the estimate is 0
                _SLOT.pack_into(self._map, slot, digest, *state, expires)
            return allowed
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, _BUCKET_BYTES, start)

    def reset(self, namespace: str, key: str) -> None:
        digest = _digest(namespace, key)
        start = _HEADER_BYTES + int.from_bytes(digest[8:], "little") % self.buckets * _BUCKET_BYTES
        fcntl.lockf(self._fd, fcntl.LOCK_EX, _BUCKET_BYTES, start)
        try:
            slot = self._find(digest, start)
            if slot is not None:
                self._map[slot : slot + _SLOT_BYTES] = bytes(_SLOT_BYTES)
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, _BUCKET_BYTES, start)

    def _find(self, digest: bytes, start: int) -> int | None:
        end = start + _BUCKET_BYTES
        position = self._map.find(digest, start, end)
        while position != -1:
            if (position - start) % _SLOT_BYTES == 0:
                return position
            position = self._map.find(digest, position + 1, end)  # matched across fields
        return None

    def _free_slot(self, start: int, now: float) -> int:
        oldest, oldest_expiry = start, math.inf
        for slot in range(start, start + _BUCKET_BYTES, _SLOT_BYTES):
            (expires,) = _EXPIRES.unpack_from(self._map, slot + _EXPIRES_AT)
            if self._map[slot : slot + 16] == _EMPTY or expires <= now:
                return slot
            if expires < oldest_expiry:
                oldest, oldest_expiry = slot, expires
        self.evictions += 1
        if now - self._last_eviction_log >= 60:
            self._last_eviction_log = now
            log.warning(
                "rate table %s: a bucket of %d keys is full, a live key was evicted "
                "(%d so far in this worker); raise [library] rate_slots",
                self.path,
                _BUCKET_SLOTS,
                self.evictions,
            )
        return oldest


class RateLimiter(Protocol):
    async def hit(
        self, namespace: str, key: str, limit: int, interval: float, count: int
    ) -> bool: ...

    async def reset(self, namespace: str, key: str) -> None: ...


class LocalRateLimiter:
    """The ``"local"`` backend: a :class:`LocalRateTable` opened in this process."""

    def __init__(self, table: LocalRateTable) -> None:
        self.table = table

    async def hit(self, namespace: str, key: str, limit: int, interval: float, count: int) -> bool:
        return self.table.hit(namespace, key, limit, interval, count)

    async def reset(self, namespace: str, key: str) -> None:
        self.table.reset(namespace, key)


# KEYS[1]: the key's hash. ARGV: limit, interval, count, now ("" for Redis's own clock).
# The same steps as decide(); state fields i(nterval), w(indow), p(revious), c(urrent).
_LUA = """
local limit = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local count = tonumber(ARGV[3])
local now
if ARGV[4] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
else
  now = tonumber(ARGV[4])
end
local index = math.floor(now / interval)
local window, previous, current = index, 0, 0
local s = redis.call('HMGET', KEYS[1], 'i', 'w', 'p', 'c')
if s[1] and tonumber(s[1]) == interval then
  local last = tonumber(s[2])
  if index <= last then
    window, previous, current = last, tonumber(s[3]), tonumber(s[4])
  elseif index == last + 1 then
    previous = tonumber(s[4])
  end
end
local passed = (now - window * interval) / interval
if passed < 0 then passed = 0 elseif passed > 1 then passed = 1 end
local estimate = previous * (1 - passed) + current
if count == 0 then
  if estimate < limit then return 1 else return 0 end
end
if estimate + count > limit then return 0 end
current = current + count
redis.call('HSET', KEYS[1], 'i', ARGV[2], 'w', window, 'p', previous, 'c', current)
local ttl = math.ceil(((window + 2) * interval - now) * 1000)
if ttl < 1 then ttl = 1 end
redis.call('PEXPIRE', KEYS[1], ttl)
return 1
"""


class RedisRateLimiter:
    """The ``"redis"`` backend: one atomic Lua script per call (EVALSHA), on Redis's clock
    unless ``clock`` is given (tests), so every node shares one count."""

    PREFIX = "mailwarden:rate:"

    def __init__(self, url: str, timeout: float = 2.0, clock: Clock | None = None) -> None:
        self.connection = RedisConnection(url, timeout)
        self.clock = clock
        self._script = None
        self._script_client = None
        # The hot path: one pipelined connection of our own (redis_pipe); redis-py for TLS.
        self._pipe = PipelinedScript(url, _LUA, timeout) if redis_pipe.supported(url) else None

    def _key(self, namespace: str, key: str) -> str:
        return f"{self.PREFIX}{len(namespace)}:{namespace}:{key}"

    async def hit(self, namespace: str, key: str, limit: int, interval: float, count: int) -> bool:
        now = "" if self.clock is None else repr(float(self.clock()))
        keys, args = [self._key(namespace, key)], [limit, repr(float(interval)), count, now]
        try:
            if self._pipe is not None:
                answer = await self._pipe(keys, args)
            else:
                client = self.connection.client()
                if self._script_client is not client:
                    self._script, self._script_client = client.register_script(_LUA), client
                answer = await self._script(keys=keys, args=args)  # type: ignore[misc]
        except Exception as error:  # redis-py's errors, OSError, timeouts
            raise self.connection.error(f"rate({namespace!r}, …)", error) from error
        return answer == 1

    async def reset(self, namespace: str, key: str) -> None:
        try:
            await self.connection.client().delete(self._key(namespace, key))
        except Exception as error:
            raise self.connection.error(f"rate_reset({namespace!r}, …)", error) from error


_limiter: RateLimiter | None = None
_local_tables: dict[tuple[Path, int], LocalRateTable] = {}


def _local(path: Path, slots: int) -> LocalRateLimiter:
    table = _local_tables.get((path, slots))
    if table is None:
        table = _local_tables[(path, slots)] = LocalRateTable(path, slots)
    return LocalRateLimiter(table)


def configure(settings: LibrarySettings, data_dir: Path) -> None:
    """Use the backend ``settings.rate_backend`` names from the next call on."""
    global _limiter
    if settings.rate_backend == "redis":
        assert settings.redis_url is not None  # the configuration checks it
        current = _limiter
        if isinstance(current, RedisRateLimiter) and current.connection.url == settings.redis_url:
            current.connection.timeout = settings.timeout
            if current._pipe is not None:
                current._pipe.timeout = settings.timeout
            return
        _close_pipe(current)
        _limiter = RedisRateLimiter(settings.redis_url, settings.timeout)
        return
    _close_pipe(_limiter)
    slots = settings.rate_slots
    _limiter = _local(library_dir(data_dir) / f"rate-{slots}.table", slots)


def _close_pipe(limiter: RateLimiter | None) -> None:
    """A Redis limiter being replaced: close its connection (its reader task would keep it)."""
    if isinstance(limiter, RedisRateLimiter) and limiter._pipe is not None:
        limiter._pipe.close()


def use(limiter: RateLimiter | None) -> None:
    """Use ``limiter`` for rate() (tests); None: back to the default."""
    global _limiter
    _limiter = limiter


def _default() -> RateLimiter:
    global _limiter
    if _limiter is None:  # a script run outside a node (its own tests): the default place
        from mailwarden.config.library import LibrarySettings
        from mailwarden.config.models import default_data_dir

        configure(LibrarySettings(), default_data_dir())
    assert _limiter is not None
    return _limiter


async def rate(namespace: str, key: str, limit: int, interval: float, *, count: int = 1) -> bool:
    """True while ``key`` of ``namespace`` is within ``limit`` events per ``interval``
    seconds, counting this call's ``count`` events (only when it is allowed); ``count=0``
    counts nothing and is True while one more event would fit. Raises TypeError/ValueError
    for bad arguments, BackendError when the backend fails (Redis down: a 4xx for the
    client)."""
    _check(namespace, key, limit, interval, count)
    return await (_limiter or _default()).hit(namespace, key, limit, float(interval), count)


async def rate_reset(namespace: str, key: str) -> None:
    """Forget what ``key`` of ``namespace`` counted, for every interval."""
    _check(namespace, key, 0, 1, 0)
    await (_limiter or _default()).reset(namespace, key)
