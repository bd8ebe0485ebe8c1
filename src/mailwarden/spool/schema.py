"""The shard schema, its version (``PRAGMA user_version``) and the migrations between versions.

Version 1 is the schema the first release shipped; it never set ``user_version``, so a shard
whose version is 0 but which has a ``messages`` table is a version 1 shard. Opening a shard
applies every migration past its version, in order, in one transaction (``BEGIN IMMEDIATE``,
so two processes opening the same shard migrate it once): a crash during a migration leaves the
old version whole, and running it again is harmless. A shard newer than this code refuses to
open, because the old code would write rows the new one does not expect.

Version 2 (for delivery):
- ``messages.leased_by``/``lease_until``: a delivery in progress holds a lease on the message;
- index ``recipients_due`` on ``recipients(state, next_attempt)``: the queue manager's query of
  due recipients; per-recipient ``retry_count``/``next_attempt`` are the ones that count, so
  the unused index on ``messages(next_attempt)`` goes (one index write less per message).

Version 3: ``recipients.delay_notified``: a delay DSN (RFC 3464 action ``delayed``) went out
for the recipient, so a warning is sent once, not at every retry.

Version 4 (quarantine retention, :mod:`mailwarden.queue.retention`): a held recipient's
``next_attempt`` is its retention end, and ``recipients.on_expiry`` (``discard`` or
``bounce``) what that end does. Recipients held before version 4 were promised to stay until
released: their retention end becomes infinite, so the first sweep does not discard them.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Callable
from pathlib import Path

from mailwarden.smtp import replies
from mailwarden.spool.errors import SpoolError

# The exact text version 1 created (kept verbatim: tests build old shards from it).
SCHEMA_V1 = """
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


def _create_v1(db: sqlite3.Connection) -> None:
    # Statement by statement: executescript() would commit the migration's transaction.
    for statement in SCHEMA_V1.split(";"):
        if statement.strip():
            db.execute(statement)


def _v1_to_v2(db: sqlite3.Connection) -> None:
    _add_column(db, "messages", "leased_by", "TEXT")
    _add_column(db, "messages", "lease_until", "REAL")
    db.execute("CREATE INDEX IF NOT EXISTS recipients_due ON recipients(state, next_attempt)")
    db.execute("DROP INDEX IF EXISTS messages_next_attempt")


def _add_column(db: sqlite3.Connection, table: str, column: str, declaration: str) -> None:
    """ALTER TABLE ADD COLUMN has no IF NOT EXISTS; asking first keeps the step idempotent."""
    present = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
    if column not in present:
        db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")


def _v2_to_v3(db: sqlite3.Connection) -> None:
    _add_column(db, "recipients", "delay_notified", "INTEGER NOT NULL DEFAULT 0")


def _v3_to_v4(db: sqlite3.Connection) -> None:
    _add_column(db, "recipients", "on_expiry", "TEXT NOT NULL DEFAULT 'discard'")
    # Idempotent: an infinite end stays infinite.
    db.execute("UPDATE recipients SET next_attempt = ? WHERE state = 'held'", (math.inf,))


# (version reached, step from the version before); in order, one per version.
MIGRATIONS: tuple[tuple[int, Callable[[sqlite3.Connection], None]], ...] = (
    (1, _create_v1),
    (2, _v1_to_v2),
    (3, _v2_to_v3),
    (4, _v3_to_v4),
)
CURRENT_VERSION = MIGRATIONS[-1][0]


def shard_version(db: sqlite3.Connection) -> int:
    """The schema version of an open shard: ``user_version``, or 1 for a shard of the first
    release (version 0 with tables), or 0 for an empty database."""
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version == 0 and _has_table(db, "messages"):
        return 1
    return version


def _has_table(db: sqlite3.Connection, name: str) -> bool:
    row = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
    return row.fetchone() is not None


def check_known(path: Path, version: int) -> None:
    """Raises SpoolError if ``version`` is newer than this code can read or write."""
    if version > CURRENT_VERSION:
        raise SpoolError(
            replies.SPOOL_WRITE_FAILED,
            f"{path}: spool schema version {version} is newer than this Mailwarden knows"
            f" (up to {CURRENT_VERSION}); run the Mailwarden that wrote it, or a newer one",
        )


def migrate(db: sqlite3.Connection, path: Path) -> int:
    """Bring the shard at ``path`` (open as ``db``, autocommit mode) to CURRENT_VERSION.

    Returns the version it had. Raises SpoolError for a newer shard; sqlite3.Error if a step
    fails, the shard then keeping its old version whole (the transaction rolls back)."""
    db.execute("BEGIN IMMEDIATE")  # the version is read under the write lock: one migrator
    try:
        found = shard_version(db)
        check_known(path, found)
        for version, step in MIGRATIONS:
            if version > found:
                step(db)
        if found != CURRENT_VERSION:
            db.execute(f"PRAGMA user_version = {CURRENT_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return found
