"""``datastore``: a namespaced key/value store that scripts read and operators edit.

::

    from mailwarden.lib import datastore

    async def rcpt_to(conn, tx, recipient):
        route = await datastore.get("routes", recipient.address, default=None)

Values are JSON (``None``, bool, numbers, str, lists and dicts of them), stored as JSON text
and returned as a new object on every ``get``. A key may have a time to live. Operators use
``mailwarden datastore get|set|delete|list``. Backends (``[library] datastore``):

* ``"sqlite"`` (default): ``node.data_dir/library/datastore.db`` (WAL, ``synchronous=NORMAL``),
  shared by every worker of the node; calls run inline (a point query is a few µs; a write
  waits at most ``busy_timeout`` for another worker's write);
* ``"redis"``: one string key per entry (``SET … PX``) and one set per namespace for ``keys``;
* ``"postgresql"``: a table ``mailwarden_datastore`` created at first use (psycopg 3, async).

Expired entries read as absent everywhere; they are removed lazily.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from mailwarden.lib.backends import BackendError, RedisConnection, library_dir

if TYPE_CHECKING:
    from mailwarden.config.library import LibrarySettings

__all__ = [
    "Datastore",
    "DatastoreBackend",
    "PostgresqlDatastore",
    "RedisDatastore",
    "SqliteDatastore",
    "configure",
    "datastore",
]

MAX_NAMESPACE = 255
MAX_KEY = 1024
Clock = Callable[[], float]


def _check_name(what: str, value: object, longest: int) -> str:
    if type(value) is not str or not value:
        raise TypeError(f"datastore: the {what} must be a non-empty str, got {value!r}")
    if len(value) > longest or not value.isprintable():
        raise ValueError(
            f"datastore: the {what} {value[:40]!r} must be at most {longest} printable characters"
        )
    return value


def _encode(namespace: str, key: str, value: object) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"datastore.set({namespace!r}, {key!r}, …): the value must be JSON "
            f"(None, bool, int, float, str, list, dict with str keys): {error}"
        ) from None


def _check_ttl(ttl: object) -> float | None:
    if ttl is None:
        return None
    if type(ttl) not in (int, float) or not 0 < ttl < math.inf:  # type: ignore[operator]
        raise ValueError(f"datastore.set(): ttl must be a number of seconds > 0, got {ttl!r}")
    return float(ttl)  # type: ignore[arg-type]


class DatastoreBackend(Protocol):
    """What a backend does, with validated names and JSON text; expired entries are absent."""

    async def get(self, namespace: str, key: str) -> str | None: ...
    async def set(self, namespace: str, key: str, value: str, ttl: float | None) -> None: ...
    async def delete(self, namespace: str, key: str) -> bool: ...
    async def items(self, namespace: str) -> dict[str, str]: ...
    async def close(self) -> None: ...


class SqliteDatastore:
    """One SQLite file shared by the node's workers (and the ``mailwarden datastore`` CLI)."""

    PURGE_INTERVAL = 60.0  # seconds between removals of expired rows

    def __init__(self, path: Path, clock: Clock = time.time, busy_timeout: float = 5.0) -> None:
        self.path = path
        self.clock = clock
        self.busy_timeout = busy_timeout
        self._db: sqlite3.Connection | None = None
        self._purged = -math.inf

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS datastore (namespace TEXT NOT NULL, "
                "key TEXT NOT NULL, value TEXT NOT NULL, expires REAL, "
                "PRIMARY KEY (namespace, key)) WITHOUT ROWID"
            )
            self._db = db
        return self._db

    def _run(self, what: str, sql: str, parameters: tuple[Any, ...]) -> sqlite3.Cursor:
        try:
            return self._connection().execute(sql, parameters)
        except sqlite3.Error as error:
            raise BackendError(f"datastore.{what}: SQLite {self.path}: {error}") from error

    async def get(self, namespace: str, key: str) -> str | None:
        row = self._run(
            "get",
            "SELECT value FROM datastore WHERE namespace = ? AND key = ? "
            "AND (expires IS NULL OR expires > ?)",
            (namespace, key, self.clock()),
        ).fetchone()
        return None if row is None else str(row[0])

    async def set(self, namespace: str, key: str, value: str, ttl: float | None) -> None:
        now = self.clock()
        self._run(
            "set",
            "INSERT INTO datastore (namespace, key, value, expires) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value, "
            "expires = excluded.expires",
            (namespace, key, value, None if ttl is None else now + ttl),
        )
        if now - self._purged >= self.PURGE_INTERVAL:
            self._purged = now
            self._run("set", "DELETE FROM datastore WHERE expires <= ?", (now,))

    async def delete(self, namespace: str, key: str) -> bool:
        row = self._run(
            "delete",
            "DELETE FROM datastore WHERE namespace = ? AND key = ? RETURNING expires",
            (namespace, key),
        ).fetchone()
        return row is not None and (row[0] is None or row[0] > self.clock())

    async def items(self, namespace: str) -> dict[str, str]:
        rows = self._run(
            "items",
            "SELECT key, value FROM datastore WHERE namespace = ? "
            "AND (expires IS NULL OR expires > ?) ORDER BY key",
            (namespace, self.clock()),
        ).fetchall()
        return {str(key): str(value) for key, value in rows}

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()


class RedisDatastore:
    """Entries as Redis strings (``SET … PX`` for a TTL); a set per namespace lists its keys,
    pruned of expired ones when ``keys`` finds them gone."""

    PREFIX = "mailwarden:datastore:"

    def __init__(self, url: str, timeout: float = 2.0) -> None:
        self.connection = RedisConnection(url, timeout)

    def _entry(self, namespace: str, key: str) -> str:
        return f"{self.PREFIX}{len(namespace)}:{namespace}:{key}"

    def _index(self, namespace: str) -> str:
        return f"{self.PREFIX}keys:{namespace}"

    async def get(self, namespace: str, key: str) -> str | None:
        try:
            value = await self.connection.client().get(self._entry(namespace, key))
        except Exception as error:
            raise self.connection.error("datastore.get", error) from error
        return None if value is None else bytes(value).decode()

    async def set(self, namespace: str, key: str, value: str, ttl: float | None) -> None:
        try:
            async with self.connection.client().pipeline(transaction=True) as pipe:
                pipe.set(
                    self._entry(namespace, key),
                    value,
                    px=None if ttl is None else max(1, math.ceil(ttl * 1000)),
                )
                pipe.sadd(self._index(namespace), key)
                await pipe.execute()
        except Exception as error:
            raise self.connection.error("datastore.set", error) from error

    async def delete(self, namespace: str, key: str) -> bool:
        try:
            async with self.connection.client().pipeline(transaction=True) as pipe:
                pipe.delete(self._entry(namespace, key))
                pipe.srem(self._index(namespace), key)
                deleted, _ = await pipe.execute()
        except Exception as error:
            raise self.connection.error("datastore.delete", error) from error
        return bool(deleted)

    async def items(self, namespace: str) -> dict[str, str]:
        client = self.connection.client()
        try:
            keys = sorted(bytes(k).decode() for k in await client.smembers(self._index(namespace)))
            values = await client.mget([self._entry(namespace, k) for k in keys]) if keys else []
            gone = [key for key, value in zip(keys, values, strict=True) if value is None]
            if gone:  # expired (or deleted by hand): drop them from the index
                await client.srem(self._index(namespace), *gone)
        except Exception as error:
            raise self.connection.error("datastore.keys", error) from error
        return {
            key: bytes(value).decode()
            for key, value in zip(keys, values, strict=True)
            if value is not None
        }

    async def close(self) -> None:
        await self.connection.close()


class PostgresqlDatastore:
    """A table ``mailwarden_datastore`` (created at first use), one psycopg 3 async
    connection per event loop, reconnected after a failure."""

    SCHEMA = (
        "CREATE TABLE IF NOT EXISTS mailwarden_datastore (namespace text NOT NULL, "
        "key text NOT NULL, value text NOT NULL, expires double precision, "
        "PRIMARY KEY (namespace, key))"
    )

    def __init__(self, url: str, timeout: float = 2.0, clock: Clock = time.time) -> None:
        self.url = url
        self.timeout = timeout
        self.clock = clock
        self._connection: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None

    async def _connect(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._connection is not None and self._loop is loop and not self._connection.closed:
            return self._connection
        import psycopg

        connection = await psycopg.AsyncConnection.connect(
            self.url, autocommit=True, connect_timeout=max(1, math.ceil(self.timeout))
        )
        await connection.execute(self.SCHEMA)
        self._connection, self._loop = connection, loop
        return connection

    async def _run(self, what: str, sql: str, parameters: tuple[Any, ...]) -> list[Any]:
        loop = asyncio.get_running_loop()
        if self._lock is None or self._loop is not loop:
            self._lock = asyncio.Lock()
        try:
            async with asyncio.timeout(self.timeout), self._lock:
                connection = await self._connect()
                cursor = await connection.execute(sql, parameters)
                return list(await cursor.fetchall()) if cursor.description else []
        except Exception as error:  # psycopg.Error, OSError, TimeoutError
            broken, self._connection = self._connection, None  # reconnect next time
            if broken is not None:
                with contextlib.suppress(Exception):  # it is broken already
                    await broken.close()
            detail = str(error).strip() or type(error).__name__
            raise BackendError(f"datastore.{what}: PostgreSQL: {detail}") from error

    async def get(self, namespace: str, key: str) -> str | None:
        rows = await self._run(
            "get",
            "SELECT value FROM mailwarden_datastore WHERE namespace = %s AND key = %s "
            "AND (expires IS NULL OR expires > %s)",
            (namespace, key, self.clock()),
        )
        return str(rows[0][0]) if rows else None

    async def set(self, namespace: str, key: str, value: str, ttl: float | None) -> None:
        now = self.clock()
        await self._run(
            "set",
            "INSERT INTO mailwarden_datastore (namespace, key, value, expires) "
            "VALUES (%s, %s, %s, %s) ON CONFLICT (namespace, key) DO UPDATE SET "
            "value = EXCLUDED.value, expires = EXCLUDED.expires",
            (namespace, key, value, None if ttl is None else now + ttl),
        )

    async def delete(self, namespace: str, key: str) -> bool:
        rows = await self._run(
            "delete",
            "DELETE FROM mailwarden_datastore WHERE namespace = %s AND key = %s RETURNING expires",
            (namespace, key),
        )
        return bool(rows) and (rows[0][0] is None or rows[0][0] > self.clock())

    async def items(self, namespace: str) -> dict[str, str]:
        now = self.clock()
        rows = await self._run(
            "keys",
            "SELECT key, value FROM mailwarden_datastore WHERE namespace = %s "
            "AND (expires IS NULL OR expires > %s) ORDER BY key",
            (namespace, now),
        )
        return {str(key): str(value) for key, value in rows}

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and self._loop is asyncio.get_running_loop():
            await connection.close()


class Datastore:
    """What scripts call (``datastore.get`` …): checks the names and values, encodes JSON, and
    hands the call to the configured backend."""

    def __init__(self, backend: DatastoreBackend | None = None) -> None:
        self.backend = backend

    def _backend(self) -> DatastoreBackend:
        if self.backend is None:  # outside a node (a script's own tests): the default place
            from mailwarden.config.models import default_data_dir

            self.backend = SqliteDatastore(library_dir(default_data_dir()) / "datastore.db")
        return self.backend

    async def get(self, namespace: str, key: str, default: Any = None) -> Any:
        """The value of ``key`` in ``namespace``, or ``default`` when it is absent or expired.
        Raises BackendError when the backend fails."""
        _check_name("namespace", namespace, MAX_NAMESPACE)
        _check_name("key", key, MAX_KEY)
        text = await self._backend().get(namespace, key)
        return default if text is None else json.loads(text)

    async def set(self, namespace: str, key: str, value: Any, *, ttl: float | None = None) -> None:
        """Store ``value`` (JSON) under ``key``, replacing what was there; with ``ttl`` it reads
        as absent ``ttl`` seconds from now. Raises TypeError for a value that is not JSON."""
        _check_name("namespace", namespace, MAX_NAMESPACE)
        _check_name("key", key, MAX_KEY)
        seconds = _check_ttl(ttl)
        await self._backend().set(namespace, key, _encode(namespace, key, value), seconds)

    async def delete(self, namespace: str, key: str) -> bool:
        """Remove ``key``; True if it was there (and not expired)."""
        _check_name("namespace", namespace, MAX_NAMESPACE)
        _check_name("key", key, MAX_KEY)
        return await self._backend().delete(namespace, key)

    async def keys(self, namespace: str) -> list[str]:
        """The live keys of ``namespace``, sorted."""
        return list(await self.items(namespace))

    async def items(self, namespace: str) -> dict[str, Any]:
        """Every live entry of ``namespace`` as ``{key: value}``, keys sorted."""
        _check_name("namespace", namespace, MAX_NAMESPACE)
        found = await self._backend().items(namespace)
        return {key: json.loads(found[key]) for key in sorted(found)}


datastore = Datastore()


def backend_for(settings: LibrarySettings, data_dir: Path) -> DatastoreBackend:
    """A new backend for ``settings.datastore``."""
    if settings.datastore == "redis":
        assert settings.redis_url is not None  # the configuration checks it
        return RedisDatastore(settings.redis_url, settings.timeout)
    if settings.datastore == "postgresql":
        assert settings.postgresql_url is not None
        return PostgresqlDatastore(settings.postgresql_url, settings.timeout)
    return SqliteDatastore(library_dir(data_dir) / "datastore.db")


def _same(backend: DatastoreBackend | None, new: DatastoreBackend) -> bool:
    if type(backend) is not type(new):
        return False
    if isinstance(backend, SqliteDatastore) and isinstance(new, SqliteDatastore):
        return backend.path == new.path
    if isinstance(backend, RedisDatastore) and isinstance(new, RedisDatastore):
        return backend.connection.url == new.connection.url
    if isinstance(backend, PostgresqlDatastore) and isinstance(new, PostgresqlDatastore):
        return backend.url == new.url
    return False


def configure(settings: LibrarySettings, data_dir: Path) -> None:
    """Use the backend ``settings.datastore`` names from the next call on (a reload naming
    the same one keeps its connection)."""
    new = backend_for(settings, data_dir)
    if not _same(datastore.backend, new):
        datastore.backend = new
