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
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailwarden.smtp import replies
from mailwarden.spool.errors import SpoolError, reply_for_os_error
from mailwarden.spool.reader import spill_file_name

log = logging.getLogger("mailwarden.spool")

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,
    server_id TEXT NOT NULL,
    received_at REAL NOT NULL,
    sender TEXT NOT NULL,
    sender_params TEXT NOT NULL,
    client_ip TEXT NOT NULL,
    client_port INTEGER NOT NULL,
    helo TEXT,
    tls TEXT,
    auth TEXT,
    metadata TEXT NOT NULL,
    headers BLOB NOT NULL,
    body BLOB,
    body_file TEXT,
    size INTEGER NOT NULL,
    retry_count INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS recipients (
    message_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    address TEXT NOT NULL,
    params TEXT NOT NULL,
    metadata TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    retry_count INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    last_reply TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (message_id, position)
);
CREATE INDEX IF NOT EXISTS messages_next_attempt ON messages(next_attempt);
"""


@dataclass(slots=True)
class SpooledRecipient:
    address: str
    params: dict[str, str | None]
    metadata: dict[str, Any]
    state: str = "active"  # active | deferred | held
    reason: str = ""


@dataclass(slots=True)
class SpoolRecord:
    """Everything delivery needs about one accepted message."""

    id: str
    server_id: str
    received_at: float
    sender: str
    sender_params: dict[str, str | None]
    client_ip: str
    client_port: int
    helo: str | None
    tls: dict[str, Any] | None
    auth: dict[str, Any] | None
    metadata: dict[str, Any]
    headers: bytes
    body: bytes | None  # in memory, or None when ``body_file`` holds it
    body_file: Path | None
    body_fd: int | None
    size: int
    recipients: list[SpooledRecipient] = field(default_factory=list)


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
            db.executescript(SCHEMA)
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
            self._drain_task = loop.create_task(self._drain())
        await future

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
                db.executemany(
                    "INSERT INTO messages VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,0,?)",
                    [_message_row(r, self.directory) for r in records],
                )
                db.executemany(
                    "INSERT INTO recipients (message_id, position, address, params, metadata,"
                    " state, reason, next_attempt) VALUES (?,?,?,?,?,?,?,?)",
                    [row for r in records for row in _recipient_rows(r)],
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


def _as_spool_error(error: Exception) -> SpoolError:
    """``error`` as the SpoolError its waiting sessions get; logs the unexpected ones."""
    if isinstance(error, SpoolError):
        return error
    log.error("spool commit failed: %r", error, exc_info=error)
    return SpoolError(replies.SPOOL_WRITE_FAILED, f"spool write failed: {error!r}")


def _body_file_name(body_file: Path | None, spool_dir: Path) -> str | None:
    """How a row names its spill file: relative to the spool directory, so that the spool can
    be moved (an absolute path would point at the old place)."""
    if body_file is None:
        return None
    try:
        return Path(body_file).relative_to(spool_dir).as_posix()
    except ValueError:  # not under the spool: keep it as it is, the reader resolves by name
        return str(body_file)


def _message_row(r: SpoolRecord, spool_dir: Path) -> tuple[Any, ...]:
    return (
        r.id,
        r.server_id,
        r.received_at,
        r.sender,
        json.dumps(r.sender_params),
        r.client_ip,
        r.client_port,
        r.helo,
        json.dumps(r.tls) if r.tls else None,
        json.dumps(r.auth) if r.auth else None,
        json.dumps(r.metadata, default=str),
        r.headers,
        r.body,
        _body_file_name(r.body_file, spool_dir),
        r.size,
        r.received_at,
    )


def _recipient_rows(r: SpoolRecord) -> list[tuple[Any, ...]]:
    return [
        (
            r.id,
            position,
            rcpt.address,
            json.dumps(rcpt.params),
            json.dumps(rcpt.metadata, default=str),
            rcpt.state,
            rcpt.reason,
            r.received_at,
        )
        for position, rcpt in enumerate(r.recipients)
    ]


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
