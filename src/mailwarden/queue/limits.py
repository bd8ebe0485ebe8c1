"""Node-wide shaping state: connection slots, rates, backoff and suspensions, shared by every
worker process of a node, with nothing to install.

Everything lives under one directory (``<data_dir>/queue``):

- ``slots/<hash>.lock``: one empty file per connection key. A connection holds an exclusive
  POSIX byte-range lock (``fcntl(F_SETLK)``) on one byte of it: byte *i* is slot *i*. The kernel
  drops a process's locks when it exits, however it exits (kill -9 included), so a dead worker's
  slots are free at once. POSIX locks belong to the process and do not exclude the same process,
  so each process also keeps its own table of the slots it holds, and keeps every lock file open
  for its lifetime (closing any descriptor of a file drops all the process's locks on it). The
  files are never removed while a node runs (a removed file with a lock on it would let a second
  file with the same name count separately); they are empty, one per key ever seen.
  Acquiring under limit *N* takes the lowest free byte below *N*. When some process holds a
  byte at or above *N* (the limit was lowered by backoff while connections were open) the
  held bytes are counted exactly first (``F_GETLK``), so connections opened afterwards never
  bring the total above the new limit; those already open stay until they close.
  A process that has attempts waiting and finds a key's slots taken says so: it locks byte
  ``DEMAND_BASE + pid`` of the same file while it waits. The slots are then shared fairly:
  while other processes want a key, a process takes no more than its share of the limit
  (``ceil(limit / (wanting processes + 1))``) and its connections give theirs back rather than
  wait idle for more mail (:meth:`NodeLimits.should_yield`). Without this the first worker to
  lease a large queue held every slot, the others waited for its idle timeout, and the node
  drained on one core.
- ``limits.sqlite``: rates and backoff state, SQLite in WAL mode with ``synchronous=OFF``:
  nothing there needs to survive a power cut (a lost rate counter allows one interval's worth
  of messages early; lost backoff state means full limits again). A database found damaged
  when opened is replaced by an empty one.
- ``suspensions.sqlite``: suspensions, which are operator decisions and must survive restarts
  and power cuts: WAL with ``synchronous=FULL`` (written only by ``suspend``/``resume``). A
  separate file rather than a table of ``limits.sqlite``, because a database written with
  ``synchronous=OFF`` can be damaged by a power cut as a whole, whatever one connection's
  setting was for one commit. Reads are cached and re-read only when another connection has
  committed (``PRAGMA data_version``), so the check on every attempt costs a few microseconds.

Rates are a GCRA (generic cell rate algorithm) without burst tolerance: ``messages`` per
``interval`` means one message every ``T = interval / messages`` seconds. The state per key is
one number, the theoretical arrival time ``tat``: a message may go at ``now`` when ``tat <=
now``, and then ``tat = now + count * T``. So successive messages are at least ``T`` apart and
**no window of ``interval`` seconds ever holds more than ``messages`` messages** (taken one at a
time; a batch of ``count`` takes ``count`` slots at once, so a window can hold ``messages +
count - 1``). It smooths rather than bursts: ``100/60`` sends one message every 0.6 s, never
100 at once. The check and update are one SQL statement, so workers never race. ``now`` is
``time.time()`` (the same clock in every process, and across restarts); a wall clock set back
by *N* seconds holds a busy rate back by up to *N* seconds more, never lets it run faster.

All calls are synchronous and take microseconds (an fcntl call per slot tried, one SQLite
statement per rate or backoff call); they run on the event loop. The SQLite connections stay
open; after a fork the child opens its own (connections and locks are never shared across a
fork).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import sqlite3
import struct
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from mailwarden.delivery.errors import DeliveryReply
from mailwarden.queue.shaping import (
    BackoffState,
    DeliveryFields,
    Limits,
    ShapingDefaults,
    ShapingRule,
    Suspension,
    backoff_after_reply,
    check_field,
    limits_for,
)

# struct flock on Linux (x86-64, arm64): short l_type, short l_whence, off_t l_start,
# off_t l_len, pid_t l_pid, padded to 32 bytes.
_FLOCK = "hhqqi4x"
DEMAND_BASE = 1 << 40  # byte DEMAND_BASE + pid: that process waits for a slot of the key
WAITING_TTL = 0.05  # seconds should_yield reuses what it found about waiting processes
_BUSY_TIMEOUT = 2.0  # seconds a write waits for another process's (microseconds long) write
_LIMITS_SCHEMA = """
CREATE TABLE IF NOT EXISTS rates (key TEXT PRIMARY KEY, tat REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS backoff (
    key TEXT PRIMARY KEY, level INTEGER NOT NULL, since REAL NOT NULL, reason TEXT NOT NULL
) WITHOUT ROWID;
"""
_SUSPENSIONS_SCHEMA = """
CREATE TABLE IF NOT EXISTS suspensions (
    field TEXT NOT NULL, value TEXT NOT NULL, until REAL, reason TEXT NOT NULL,
    PRIMARY KEY (field, value)
) WITHOUT ROWID;
"""
# GCRA without burst: a message conforms when tat <= now; then tat = now + count * T. The
# RETURNING row is absent when the update was refused.
_TAKE = """
INSERT INTO rates (key, tat) VALUES (:key, :now + :cost)
ON CONFLICT (key) DO UPDATE SET tat = :now + :cost WHERE rates.tat <= :now
RETURNING tat
"""


class ConnectionSlot:
    """One held connection slot; ``release`` gives it back (idempotent). A context manager."""

    __slots__ = ("_limits", "index", "key", "limit", "released")

    def __init__(self, limits: NodeLimits, key: str, index: int, limit: int) -> None:
        self._limits = limits
        self.key = key
        self.index = index
        self.limit = limit  # the key's limit when the slot was taken
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._limits._release(self)

    def __enter__(self) -> ConnectionSlot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "released" if self.released else "held"
        return f"<ConnectionSlot {self.key!r} #{self.index} {state}>"


class NodeLimits:
    """The node's shared shaping state under ``directory`` (created if missing)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._lock = threading.Lock()
        self._pid = -1
        self._open()

    # -- process-local resources ---------------------------------------------------------

    def _open(self) -> None:
        self._pid = os.getpid()
        (self.directory / "slots").mkdir(parents=True, exist_ok=True)
        self._files: dict[str, int] = {}  # key -> descriptor of its lock file, kept open
        self._held: dict[str, set[int]] = {}  # key -> slot indexes this process holds
        self._wanting: dict[str, int] = {}  # key -> destinations of this process waiting
        self._waiting_seen: dict[str, tuple[float, int]] = {}  # key -> (until, others waiting)
        # Setting up the databases (WAL mode, tables) takes locks that SQLite does not wait
        # for; workers starting together take turns here instead.
        with (self.directory / "init.lock").open("a") as init:
            fcntl.flock(init, fcntl.LOCK_EX)
            self._db = _open_limits_db(self.directory / "limits.sqlite")
            self._suspend_db = _connect(self.directory / "suspensions.sqlite", "FULL")
            self._suspend_db.executescript(_SUSPENSIONS_SCHEMA)
        self._suspend_version = -1
        self._suspend_cache: list[Suspension] = []

    def _here(self) -> None:
        """After a fork, the child starts afresh: its parent's locks are not its own. (The
        inherited SQLite connections are left alone, never used or closed, as SQLite asks.)"""
        if os.getpid() != self._pid:
            for descriptor in self._files.values():
                os.close(descriptor)  # drops only this process's locks: none
            self._open()

    def close(self) -> None:
        """Close the databases and lock files (which frees this process's slots)."""
        with self._lock:
            if os.getpid() == self._pid:
                for descriptor in self._files.values():
                    os.close(descriptor)
                self._db.close()
                self._suspend_db.close()
            self._files, self._held, self._wanting = {}, {}, {}

    # -- connection slots ----------------------------------------------------------------

    def _descriptor(self, key: str) -> int:
        descriptor = self._files.get(key)
        if descriptor is None:
            name = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:40]
            path = self.directory / "slots" / f"{name}.lock"
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._files[key] = descriptor
        return descriptor

    def acquire_connection(self, key: str, limit: int) -> ConnectionSlot | None:
        """A connection slot for ``key``, or None when ``limit`` slots are in use node-wide
        (by every process of the node together, this one included)."""
        if limit < 1:
            return None
        with self._lock:
            self._here()
            descriptor = self._descriptor(key)
            held = self._held.setdefault(key, set())
            wanting = _other_locks(descriptor, DEMAND_BASE, None, end=None)
            if wanting and len(held) >= _share(limit, wanting):
                return None  # the others that wait get theirs first
            own_high = sum(1 for index in held if index >= limit)
            if (own_high or _other_locks(descriptor, limit, 1)) and (
                self._count(descriptor, held) >= limit
            ):
                return None
            for index in range(limit):
                if index in held:
                    continue
                try:
                    fcntl.lockf(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, index)
                except OSError as err:
                    if err.errno in (errno.EACCES, errno.EAGAIN):
                        continue
                    raise
                held.add(index)
                return ConnectionSlot(self, key, index, limit)
            return None

    def acquire_all(
        self, connection_keys: Sequence[tuple[str, int]]
    ) -> list[ConnectionSlot] | None:
        """A slot under every ``(key, limit)`` of :attr:`Limits.connection_keys`, or None (and
        nothing held) when any of them is at its limit."""
        slots: list[ConnectionSlot] = []
        for key, limit in connection_keys:
            slot = self.acquire_connection(key, limit)
            if slot is None:
                for taken in slots:
                    taken.release()
                return None
            slots.append(slot)
        return slots

    def want(self, key: str, wanting: bool) -> None:
        """Say (or stop saying) that attempts of this process wait for a slot of ``key``
        (module docstring: fair sharing). Counted: each caller (a destination) says True
        once and False once; the process stops wanting when the last one does."""
        with self._lock:
            self._here()
            count = self._wanting.get(key, 0)
            after = max(0, count + (1 if wanting else -1))
            if (count > 0) != (after > 0):
                command = fcntl.LOCK_EX | fcntl.LOCK_NB if after else fcntl.LOCK_UN
                fcntl.lockf(self._descriptor(key), command, 1, DEMAND_BASE + self._pid)
            if after:
                self._wanting[key] = after
            else:
                self._wanting.pop(key, None)

    def waiting(self, key: str) -> int:
        """How many other processes of the node wait for a slot of ``key``."""
        with self._lock:
            self._here()
            return _other_locks(self._descriptor(key), DEMAND_BASE, None, end=None)

    def should_yield(self, slot: ConnectionSlot, *, more_waiting: bool) -> bool:
        """Whether the connection holding ``slot`` should close now, after its message, for
        another process that waits for a slot of the key: always when this process has no
        more attempts for it (``more_waiting`` False), else when this process holds more
        than its share of the limit the slot was taken under. One ``F_GETLK`` when nobody
        waits."""
        with self._lock:
            if os.getpid() != self._pid or slot.released:
                return False
            descriptor = self._files.get(slot.key)
            if descriptor is None:
                return False
            # Asked after every message: the answer is reused for WAITING_TTL seconds.
            now = time.monotonic()
            cached = self._waiting_seen.get(slot.key)
            if cached is not None and cached[0] > now:
                wanting = cached[1]
            else:
                wanting = _other_locks(descriptor, DEMAND_BASE, None, end=None)
                self._waiting_seen[slot.key] = (now + WAITING_TTL, wanting)
            if not wanting:
                return False
            return not more_waiting or len(self._held.get(slot.key, ())) > _share(
                slot.limit, wanting
            )

    def _others(self, descriptor: int) -> int:
        return _other_locks(descriptor, 0, None, end=DEMAND_BASE)

    def connections(self, key: str) -> int:
        """How many slots of ``key`` are in use node-wide (for ``queue`` statistics)."""
        with self._lock:
            self._here()
            descriptor = self._descriptor(key)
            return self._count(descriptor, self._held.setdefault(key, set()))

    def _count(self, descriptor: int, held: set[int]) -> int:
        return len(held) + self._others(descriptor)

    def _release(self, slot: ConnectionSlot) -> None:
        with self._lock:
            if os.getpid() != self._pid:
                return  # the slot was the parent's; this process never held it
            held = self._held.get(slot.key)
            if held is None or slot.index not in held:
                return
            held.discard(slot.index)
            fcntl.lockf(self._files[slot.key], fcntl.LOCK_UN, 1, slot.index)

    # -- rates ---------------------------------------------------------------------------

    def take_rate(
        self, key: str, messages: int, interval: float, now: float, count: int = 1
    ) -> float:
        """Take ``count`` messages from the rate ``messages`` per ``interval`` seconds of
        ``key``: 0.0 when taken, else the seconds until the next one may go (nothing taken).
        ``now`` is ``time.time()``. Exactly how: the module docstring (GCRA, no burst)."""
        if messages < 1 or not interval > 0 or count < 1:
            raise ValueError(f"rate {messages}/{interval} with count {count} is not a rate")
        cost = count * interval / messages
        with self._lock:
            self._here()
            params = {"key": key, "now": now, "cost": cost}
            if self._db.execute(_TAKE, params).fetchone() is not None:
                return 0.0
            row = self._db.execute("SELECT tat FROM rates WHERE key = ?", (key,)).fetchone()
        return max(row[0] - now, 1e-6) if row is not None else 1e-6

    # -- backoff -------------------------------------------------------------------------

    def backoff(self, key: str) -> BackoffState | None:
        with self._lock:
            self._here()
            row = self._db.execute(
                "SELECT level, since, reason FROM backoff WHERE key = ?", (key,)
            ).fetchone()
        return BackoffState(level=row[0], since=row[1], reason=row[2]) if row else None

    def set_backoff(self, key: str, state: BackoffState | None) -> None:
        with self._lock:
            self._here()
            if state is None:
                self._db.execute("DELETE FROM backoff WHERE key = ?", (key,))
            else:
                self._db.execute(
                    "INSERT OR REPLACE INTO backoff (key, level, since, reason) "
                    "VALUES (?, ?, ?, ?)",
                    (key, state.level, state.since, state.reason),
                )

    def backoff_view(self) -> Mapping[str, BackoffState]:
        """The backoff states as a read-only mapping read on demand (for ``limits_for``)."""
        return _BackoffView(self)

    def record_reply(self, limits: Limits, reply: DeliveryReply, now: float) -> None:
        """Feed a reply of an attempt made under ``limits`` to the backoff of every rule
        group it counted under (:func:`~mailwarden.queue.shaping.backoff_after_reply`). Two
        workers doing so at once write the same step: the cooldown makes the race harmless."""
        for key, rule in limits.rules:
            state = self.backoff(key)
            after = backoff_after_reply(state, rule, reply, now)
            if after != state:
                self.set_backoff(key, after)

    # -- suspensions ---------------------------------------------------------------------

    def suspend(
        self, field: str, value: str, *, until: float | None = None, reason: str = ""
    ) -> None:
        """Suspend deliveries whose ``field`` matches ``value`` (a rule pattern) until
        ``until`` (None: until resumed). Replaces an earlier suspension of the same pair.
        Raises ValueError for an unknown field or an empty value. Durable when it returns."""
        check_field(field)
        if not value:
            raise ValueError("a suspension needs a value (use '*' for everything)")
        with self._lock:
            self._here()
            with self._suspend_db:
                self._suspend_db.execute("BEGIN IMMEDIATE")
                self._suspend_db.execute(
                    "DELETE FROM suspensions WHERE until IS NOT NULL AND until <= ?",
                    (time.time(),),
                )
                self._suspend_db.execute(
                    "INSERT OR REPLACE INTO suspensions (field, value, until, reason) "
                    "VALUES (?, ?, ?, ?)",
                    (field, value, until, reason),
                )
            self._suspend_version = -1  # data_version only moves for other connections' commits

    def resume(self, field: str, value: str) -> bool:
        """Lift the suspension of ``field`` = ``value``; False when there was none."""
        with self._lock:
            self._here()
            with self._suspend_db:
                done = self._suspend_db.execute(
                    "DELETE FROM suspensions WHERE field = ? AND value = ?", (field, value)
                )
            self._suspend_version = -1
            return done.rowcount > 0

    def suspensions(self, now: float) -> list[Suspension]:
        """The suspensions in force at ``now`` (expired ones are left out, and removed at the
        next ``suspend``)."""
        with self._lock:
            self._here()
            version = self._suspend_db.execute("PRAGMA data_version").fetchone()[0]
            if version != self._suspend_version:
                rows = self._suspend_db.execute(
                    "SELECT field, value, until, reason FROM suspensions ORDER BY field, value"
                ).fetchall()
                self._suspend_cache = [Suspension(*row) for row in rows]
                self._suspend_version = version
            cache = self._suspend_cache
        return [suspension for suspension in cache if suspension.active(now)]

    # -- the decision, with this node's state ------------------------------------------

    def limits_for(
        self,
        rules: Sequence[ShapingRule],
        fields: DeliveryFields,
        *,
        defaults: ShapingDefaults,
        now: float,
    ) -> Limits:
        """:func:`mailwarden.queue.shaping.limits_for` with this node's backoff and
        suspensions."""
        return limits_for(
            rules,
            fields,
            defaults=defaults,
            backoff=self.backoff_view(),
            suspensions=self.suspensions(now),
            now=now,
        )


class _BackoffView(Mapping[str, BackoffState]):
    def __init__(self, limits: NodeLimits) -> None:
        self._limits = limits

    def __getitem__(self, key: str) -> BackoffState:
        state = self._limits.backoff(key)
        if state is None:
            raise KeyError(key)
        return state

    def get(self, key: str, default: object = None) -> BackoffState | None:  # type: ignore[override]
        return self._limits.backoff(key)

    def __iter__(self) -> Iterator[str]:
        limits = self._limits
        with limits._lock:
            limits._here()
            rows = limits._db.execute("SELECT key FROM backoff").fetchall()
        return iter([row[0] for row in rows])

    def __len__(self) -> int:
        return sum(1 for _ in self)


def _share(limit: int, wanting: int) -> int:
    """A process's fair share of ``limit`` slots when ``wanting`` other processes wait."""
    return max(1, -(-limit // (wanting + 1)))


def _other_locks(
    descriptor: int, start: int, most: int | None, *, end: int | None = DEMAND_BASE
) -> int:
    """How many bytes in ``[start, end)`` (``end`` None: no end) other processes hold locks
    on (up to ``most``).

    F_GETLK reports one conflicting lock per call (not necessarily the lowest), so the range
    is split around each lock found; one call when there is none."""
    found = 0
    # (start, length); length 0: to the end of any file
    pending = [(start, 0 if end is None else end - start)]
    while pending and (most is None or found < most):
        first, length = pending.pop()
        query = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, first, length, 0)
        answer = fcntl.fcntl(descriptor, fcntl.F_GETLK, query)
        kind, _, lock_start, lock_length, _ = struct.unpack(_FLOCK, answer)
        if kind == fcntl.F_UNLCK:
            continue
        lock_end = lock_start + (lock_length or 1)  # our locks are single bytes
        found += lock_end - lock_start
        if lock_start > first:
            pending.append((first, lock_start - first))
        if length == 0:
            pending.append((lock_end, 0))
        elif lock_end < first + length:
            pending.append((lock_end, first + length - lock_end))
    return found


def _connect(path: Path, synchronous: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=_BUSY_TIMEOUT, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    return db


def _open_limits_db(path: Path) -> sqlite3.Connection:
    try:
        db = _connect(path, "OFF")
        db.executescript(_LIMITS_SCHEMA)
        db.execute("SELECT count(*) FROM rates").fetchone()
        return db
    except sqlite3.DatabaseError as err:
        if not any(sign in str(err) for sign in ("malformed", "not a database")):
            raise
    # Damaged (a power cut under synchronous=OFF): nothing in it needs keeping.
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{path}{suffix}")
    db = _connect(path, "OFF")
    db.executescript(_LIMITS_SCHEMA)
    return db
