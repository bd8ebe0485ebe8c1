"""The durable spool: a SQLite shard per worker process, written with group commit.

A 250 after DATA means the envelope, the headers and the body are on stable storage. Each worker
owns one shard (``shard-N.db`` in WAL mode with ``synchronous=FULL``), so workers never wait for
each other's locks. Commits queue up while the previous one is being written, then go to disk
together in one transaction: one WAL fsync covers every message of the batch (group commit).
Bodies that spilled to files are fsynced, and their directory once per batch, before the
transaction that names them commits, so a row never points at a file that could be lost.

A crash at any instant leaves either a committed row (the message is queued) or nothing; spill
files with no committed row are removed at the next start (:meth:`SpoolStore.open`).

Rows name their spill file relative to the spool directory (``data/shard-0-ID``), so the spool
can be moved or restored elsewhere and ``spool.path`` pointed at it: nothing in it depends on
where it used to be.

Opening a shard migrates it to the current schema (:mod:`mailwarden.spool.schema`). The commit
path is two ``executemany`` INSERTs per batch, whatever the batch holds: no query per message.
Events (:mod:`mailwarden.spool.events`) go to subscribers after the commit returned, never
before its fsync. The queue manager's functions (leases, recipient states, removal) run in the
same commit thread, on the same connection, so they never interleave with a batch; two stores
(processes) on one shard exclude each other through SQLite's write lock (``BEGIN IMMEDIATE``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from mailwarden.metrics.instruments import spool_commit
from mailwarden.smtp import replies
from mailwarden.spool import holds, outcomes, schema
from mailwarden.spool.errors import SpoolError, reply_for_os_error
from mailwarden.spool.events import (
    EventSink,
    MessageQueued,
    MessageRemoved,
    RecipientStateChanged,
    SpoolEvent,
)
from mailwarden.spool.outcomes import AttemptOutcome, LeasedMessage
from mailwarden.spool.reader import body_file_path, spill_file_name
from mailwarden.spool.records import SpooledRecipient, SpoolRecord
from mailwarden.spool.rows import INSERT_MESSAGE, INSERT_RECIPIENT, message_row, recipient_rows
from mailwarden.spool.states import DELIVERABLE, RecipientState

__all__ = ["SpoolRecord", "SpoolStore", "SpooledRecipient"]

_T = TypeVar("_T")

log = logging.getLogger("mailwarden.spool")


class SpoolStore:
    """One worker's shard of the spool. Use from one event loop; ``commit`` is the only writer."""

    def __init__(
        self, directory: Path, shard: int, *, fsync: bool = True, max_batch: int = 256
    ) -> None:
        self.directory = Path(directory)
        self.data_dir = self.directory / "data"
        self.path = self.directory / f"shard-{shard}.db"
        self._fsync = fsync
        self._max_batch = max_batch
        self._db: sqlite3.Connection | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool-commit")
        self._pending: list[tuple[SpoolRecord, asyncio.Future[None]]] = []
        self._committing = False
        self._drain_task: asyncio.Task[None] | None = None
        self.batches = 0
        self.committed = 0
        self._pending_outcomes: list[tuple[str, AttemptOutcome, asyncio.Future[None]]] = []
        self._recording = False
        self._outcome_task: asyncio.Task[None] | None = None
        self.events = EventSink()  # ``store.events.subscribe(callback)``: see spool/events.py

    # --- lifecycle -------------------------------------------------------------------------

    def open(self) -> None:
        """Create or open the shard and remove spill files that no committed row names.

        Raises SpoolError if the directory or database cannot be created.
        """
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={'FULL' if self._fsync else 'OFF'}")
            db.execute("PRAGMA foreign_keys=ON")
            try:
                schema.migrate(db, self.path)
            except BaseException:
                db.close()
                raise
            self._db = db
            self._remove_orphans()
            if self._fsync:
                _fsync_directory(self.directory)  # the shard and its WAL file exist for good
        except (OSError, sqlite3.Error) as error:
            raise SpoolError(replies.SPOOL_WRITE_FAILED, f"cannot open spool: {error}") from error

    def _remove_orphans(self) -> None:
        """Remove this shard's spill files that no row can mean.

        A row names its file relative to the spool (or, if written before that, by an absolute
        path that is stale once the spool has moved); either way the file lives in ``data/``
        under the same name, so the file name alone decides. Deleting a file a row still
        means would lose an acknowledged message; keeping an orphan only costs disk space.
        """
        assert self._db is not None
        rows = self._db.execute("SELECT body_file FROM messages WHERE body_file IS NOT NULL")
        known = {spill_file_name(row[0]) for row in rows}
        shard_prefix = self.path.stem + "-"
        for entry in self.data_dir.iterdir():
            # Only this shard's files: other workers may be writing theirs right now.
            if entry.name.startswith(shard_prefix) and entry.name not in known:
                entry.unlink(missing_ok=True)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        if self._db is not None:
            self._db.close()
            self._db = None

    def spill_path(self, message_id: str) -> Path:
        """Where a large body of this shard spills; the prefix keeps orphan clean-up per shard."""
        return self.data_dir / f"{self.path.stem}-{message_id}"

    # --- group commit ----------------------------------------------------------------------

    async def commit(self, record: SpoolRecord) -> None:
        """Make ``record`` durable. Returns once it is on stable storage.

        Raises SpoolError (reply 451) if it could not be written; then nothing of it is queued.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._pending.append((record, future))
        if not self._committing:
            self._committing = True
            # In a context of its own: the batch is several sessions', so its log lines (and
            # the events' subscribers) must not carry the ids of the session that started it.
            self._drain_task = loop.create_task(self._drain(), context=contextvars.Context())
        started = time.perf_counter()
        await future
        # What the client waited for, group commit included; failures are not observed.
        spool_commit.observe(time.perf_counter() - started)

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                records = [record for record, _ in batch]
                try:
                    await loop.run_in_executor(self._executor, self._write_batch, records)
                except Exception as error:
                    # Whatever went wrong, every session waiting on this batch gets its 451 and
                    # the drain goes on: an unexpected error must not leave them waiting for a
                    # reply that never comes (nor leave later commits unwritten).
                    spool_error = _as_spool_error(error)
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(SpoolError(spool_error.reply, str(spool_error)))
                    continue
                self.batches += 1
                self.committed += len(batch)
                for _, future in batch:
                    if not future.done():
                        future.set_result(None)
                if self.events:  # committed and fsynced: now history may hear of it
                    self.events.emit(MessageQueued(record) for record in records)
        finally:
            self._committing = False

    def _write_batch(self, records: list[SpoolRecord]) -> None:
        """Runs in the commit thread: spill files, their directory, then one transaction."""
        db = self._db
        if db is None:
            raise SpoolError(replies.SPOOL_WRITE_FAILED, "spool is closed")
        try:
            spilled = [r for r in records if r.body_fd is not None]
            for record in spilled:
                if self._fsync:
                    os.fsync(record.body_fd)  # type: ignore[arg-type]
            if spilled and self._fsync:
                _fsync_directory(self.data_dir)
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(INSERT_MESSAGE, [message_row(r, self.directory) for r in records])
                db.executemany(
                    INSERT_RECIPIENT, [row for r in records for row in recipient_rows(r)]
                )
                db.execute("COMMIT")
            except BaseException:
                # SQLite rolls the transaction back by itself after some errors (SQLITE_FULL,
                # SQLITE_IOERR); a second ROLLBACK would then fail with "no transaction is
                # active" and hide the real error (a full disk answered 4.3.0, not 4.3.1).
                if db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                raise
        except OSError as error:
            raise SpoolError(reply_for_os_error(error), str(error)) from error
        except sqlite3.Error as error:
            full = "full" in str(error).lower()
            reply = replies.SPOOL_FULL if full else replies.SPOOL_WRITE_FAILED
            raise SpoolError(reply, f"spool write failed: {error}") from error

    # --- the queue manager's side: leases, recipient states, removal ------------------------
    # Each runs in the commit thread as one IMMEDIATE transaction, then emits its event.

    async def lease_due(
        self, owner: str, *, now: float, duration: float, limit: int = 100
    ) -> list[str]:
        """Lease to ``owner``, until ``now + duration``, up to ``limit`` messages that have a
        recipient due (active or deferred, next attempt at or before ``now``) and no live
        lease. Atomic: stores racing on one shard never lease a message twice. Returns the
        ids, oldest first. An expired lease (a crashed delivery) is taken over."""
        parameters = {
            "owner": owner,
            "until": now + duration,
            "now": now,
            "limit": limit,
            **{f"s{i}": state.value for i, state in enumerate(sorted(DELIVERABLE))},
        }
        return await self._run(lambda db: outcomes.lease(db, parameters), durable=False)

    async def renew_lease(
        self, message_id: str, owner: str, *, now: float, duration: float
    ) -> bool:
        """Extend ``owner``'s lease on a message; False if ``owner`` no longer holds it."""
        sql = "UPDATE messages SET lease_until = ? WHERE id = ? AND leased_by = ?"
        until = now + duration

        def renew(db: sqlite3.Connection) -> bool:
            held = "SELECT id FROM messages WHERE id = ? AND leased_by = ?"
            outcomes.move_bumped(db, held, [message_id, owner], to=until)
            return db.execute(sql, (until, message_id, owner)).rowcount == 1

        return await self._run(renew, durable=False)

    async def release_lease(self, message_id: str, owner: str, *, now: float | None = None) -> bool:
        """End ``owner``'s lease on a message, its recipients due at ``now`` (default: the
        time); False if ``owner`` did not hold it."""
        sql = (
            "UPDATE messages SET leased_by = NULL, lease_until = NULL"
            " WHERE id = ? AND leased_by = ?"
        )

        def release(db: sqlite3.Connection) -> bool:
            held = "SELECT id FROM messages WHERE id = ? AND leased_by = ?"
            outcomes.move_bumped(db, held, [message_id, owner])
            return db.execute(sql, (message_id, owner)).rowcount == 1

        return await self._run(release, durable=False)

    async def set_recipient_state(
        self,
        message_id: str,
        position: int,
        state: RecipientState,
        *,
        reason: str = "",
        next_attempt: float | None = None,
        last_reply: str = "",
        count_attempt: bool = False,
    ) -> bool:
        """Record what happened to one recipient (``position`` in RCPT order): its state, why,
        the last reply, when to try again (kept if None) and, with ``count_attempt``, one
        more retry. False if there is no such recipient."""
        state = RecipientState(state)
        values = (state.value, reason, int(count_attempt), next_attempt, last_reply)
        rows = await self._run(
            lambda db: db.execute(_SET_STATE, (*values, message_id, position)).fetchall()
        )
        if not rows:
            return False
        address, retry_count, when = rows[0]
        self._emit(
            RecipientStateChanged(
                message_id, position, address, state, reason, retry_count, when, last_reply
            )
        )
        return True

    async def remove(self, message_id: str, reason: str) -> bool:
        """Take a message out of the spool (all its recipients final, or an operator's
        delete); its spill file goes after the commit (a crash in between leaves an orphan,
        which the next start removes). False if it was not queued."""

        def delete(db: sqlite3.Connection) -> tuple[bool, str | None]:
            row = db.execute("SELECT body_file FROM messages WHERE id = ?", (message_id,))
            found = row.fetchone()
            if found is None:
                return False, None
            db.execute("DELETE FROM messages WHERE id = ?", (message_id,))
            return True, found[0]

        removed, body_file = await self._run(delete)
        if body_file:
            body_file_path(self.directory, body_file).unlink(missing_ok=True)
        if removed:
            self._emit(MessageRemoved(message_id, reason))
        return removed

    # --- delivery: leases with the bytes, batched outcomes (see spool/outcomes.py) ----------

    async def lease_messages(
        self, owner: str, *, now: float, duration: float, limit: int
    ) -> list[LeasedMessage]:
        """Lease up to ``limit`` due messages to ``owner`` and read them with their bytes."""
        return await self._run(
            lambda db: outcomes.lease_and_load(
                db, self.directory, owner, now=now, until=now + duration, limit=limit
            ),
            durable=False,
        )

    async def renew_leases(self, owner: str, *, now: float, duration: float) -> int:
        """Extend every lease ``owner`` holds; returns how many."""
        sql = "UPDATE messages SET lease_until = ? WHERE leased_by = ?"
        until = now + duration

        def renew(db: sqlite3.Connection) -> int:
            held = "SELECT id FROM messages WHERE leased_by = ?"
            outcomes.move_bumped(db, held, [owner], to=until)
            return db.execute(sql, (until, owner)).rowcount

        return await self._run(renew, durable=False)

    async def clear_leases(self) -> int:
        """End every lease on this shard. Only its worker delivers from a shard, so at that
        worker's start a lease left behind is a crashed predecessor's: its messages are due
        again at once, not when the lease would have run out."""
        sql = "UPDATE messages SET leased_by = NULL, lease_until = NULL WHERE leased_by IS NOT NULL"

        def clear(db: sqlite3.Connection) -> int:
            held = "SELECT id FROM messages WHERE leased_by IS NOT NULL"
            outcomes.move_bumped(db, held, [])
            return db.execute(sql).rowcount

        return await self._run(clear, durable=False)

    async def next_due(self, now: float) -> float | None:
        """When the next unleased recipient falls due (None: nothing waits)."""
        return await self._run(lambda db: outcomes.next_due(db, now), durable=False)

    async def record_outcomes(self, owner: str, outcomes: Sequence[AttemptOutcome]) -> None:
        """Record these messages' attempt outcomes and end ``owner``'s leases on them, batched
        with every other outcome waiting (one transaction). Returns once they are committed:
        they survive the process (kill -9 included) at once, and a power cut from the next
        durable commit or checkpoint on; a power cut before loses the last outcomes, whose
        messages are then delivered again (at least once, as Postfix after a power cut
        delivers again a message whose queue file's removal was not yet on disk). No fsync
        of its own: delivery does not compete with the 250 path for the disk.

        Raises SpoolError if the batch could not be written; then nothing of it changed, the
        leases run out and the attempts are made again (at-least-once)."""
        if not outcomes:
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._pending_outcomes.extend((owner, outcome, future) for outcome in outcomes)
        if not self._recording:
            self._recording = True
            self._outcome_task = loop.create_task(
                self._drain_outcomes(), context=contextvars.Context()
            )
        await future

    async def _drain_outcomes(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending_outcomes:
                batch = self._pending_outcomes[: self._max_batch]
                del self._pending_outcomes[: self._max_batch]
                try:
                    apply = functools.partial(self._apply, batch=batch)
                    removed = await loop.run_in_executor(
                        self._executor, self._light_transaction, apply
                    )
                except Exception as error:
                    spool_error = _as_spool_error(error)
                    for _, _, future in batch:
                        if not future.done():
                            future.set_exception(SpoolError(spool_error.reply, str(spool_error)))
                    continue
                if self._fsync and any(body_file for _, body_file in removed):
                    # A spill file goes only once its row's removal is on disk: a power cut
                    # must never leave a row whose file is gone.
                    await loop.run_in_executor(self._executor, self._sync_wal)
                for _, body_file in removed:
                    if body_file:
                        body_file_path(self.directory, body_file).unlink(missing_ok=True)
                for _, _, future in batch:
                    if not future.done():
                        future.set_result(None)
                if self.events:
                    self._emit_outcomes(batch, removed)
        finally:
            self._recording = False

    def _apply(
        self, db: sqlite3.Connection, batch: list[tuple[str, AttemptOutcome, asyncio.Future[None]]]
    ) -> list[tuple[str, str | None]]:
        removed: list[tuple[str, str | None]] = []
        by_owner: dict[str, list[AttemptOutcome]] = {}
        for owner, outcome, _ in batch:
            by_owner.setdefault(owner, []).append(outcome)
        for owner, owned in by_owner.items():
            removed += outcomes.apply_outcomes(db, self.directory, owner, owned)
        return removed

    def _emit_outcomes(
        self,
        batch: list[tuple[str, AttemptOutcome, asyncio.Future[None]]],
        removed: list[tuple[str, str | None]],
    ) -> None:
        events: list[SpoolEvent] = []
        gone = {message_id for message_id, _ in removed}
        for _, outcome, _ in batch:
            events += (MessageQueued(record) for record in outcome.new_records)
            for r in outcome.recipients:
                events.append(
                    RecipientStateChanged(
                        outcome.message_id,
                        r.position,
                        "",
                        r.state,
                        r.reason,
                        -1,
                        r.next_attempt or 0.0,
                        r.last_reply,
                    )
                )
            if outcome.message_id in gone:
                events.append(MessageRemoved(outcome.message_id, outcome.removal_reason))
        self.events.emit(events)

    # --- quarantine retention (see spool/holds.py) -----------------------------------------

    async def expire_held(self, now: float, decide: holds.Decide, *, limit: int) -> holds.Swept:
        """Change up to ``limit`` messages whose held recipients' retention ended at or before
        ``now``, as ``decide`` says, in one transaction; spill files of removed messages go
        after it, then the events. Raises SpoolError if it could not be written (then nothing
        changed)."""
        swept = await self._run(
            lambda db: holds.expire(db, self.directory, now, decide, limit=limit)
        )
        for path in swept.unlink:
            path.unlink(missing_ok=True)
        if self.events and swept.changed:
            self.events.emit(swept.events())
        return swept

    async def _run(self, work: Callable[[sqlite3.Connection], _T], *, durable: bool = True) -> _T:
        loop = asyncio.get_running_loop()
        run = self._transaction if durable else self._light_transaction
        return await loop.run_in_executor(self._executor, run, work)

    def _sync_wal(self) -> None:
        """fsync the shard's WAL: every commit so far is then durable."""
        descriptor = os.open(f"{self.path}-wal", os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    def _light_transaction(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """``work`` in a transaction whose commit is not fsynced (``synchronous=NORMAL``
        for it; WAL mode keeps every earlier commit as durable as it was): for leases, which
        a power cut may lose without harm (the messages are due again), and delivery
        outcomes (see record_outcomes). The next durable commit's fsync covers it. Runs in
        the commit thread."""
        db = self._db
        if db is None or not self._fsync:
            return self._transaction(work)
        db.execute("PRAGMA synchronous=NORMAL")
        try:
            return self._transaction(work)
        finally:
            db.execute("PRAGMA synchronous=FULL")

    def _transaction(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """Runs in the commit thread: ``work`` in one IMMEDIATE transaction."""
        db = self._db
        if db is None:
            raise SpoolError(replies.SPOOL_WRITE_FAILED, "spool is closed")
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                result = work(db)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                raise
        except sqlite3.Error as error:
            raise SpoolError(replies.SPOOL_WRITE_FAILED, f"{self.path}: {error}") from error
        return result

    def _emit(self, event: SpoolEvent) -> None:
        if self.events:
            self.events.emit((event,))


_SET_STATE = """
UPDATE recipients
SET state = ?, reason = ?, retry_count = retry_count + ?,
    next_attempt = coalesce(?, next_attempt), last_reply = ?
WHERE message_id = ? AND position = ?
RETURNING address, retry_count, next_attempt
"""


def _as_spool_error(error: Exception) -> SpoolError:
    """``error`` as the SpoolError its waiting sessions get; logs the unexpected ones."""
    if isinstance(error, SpoolError):
        return error
    log.error("spool commit failed: %r", error, exc_info=error)
    return SpoolError(replies.SPOOL_WRITE_FAILED, f"spool write failed: {error!r}")


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
