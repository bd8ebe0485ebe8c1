"""Where the script library keeps state that outlives a connection: the ``[library]`` table.

``configure(settings, data_dir)`` points :mod:`mailwarden.lib.rate` and
:mod:`mailwarden.lib.datastore` at their backends; a worker calls it at start and on every
reload (``_configure_library`` in mailwarden.node.worker), the ``mailwarden datastore``
command before it runs. The Redis client is made lazily, in the event loop that first uses it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mailwarden.config.library import LibrarySettings

__all__ = ["BackendError", "RedisConnection", "configure", "library_dir"]


class BackendError(RuntimeError):
    """A shared-state backend (Redis, PostgreSQL, the local files) failed or did not answer
    in time. The message names the backend; a script turns it into a 4xx (``Defer``)."""


def library_dir(data_dir: Path) -> Path:
    """The folder under ``node.data_dir`` for the library's local files."""
    return Path(data_dir) / "library"


class RedisConnection:
    """One redis-py asyncio client per event loop for a URL (a client is bound to the loop
    its connections were made in; a worker has one loop, tests and the CLI make new ones)."""

    MAX_CONNECTIONS = 16  # per worker: Redis answers one command at a time anyway

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def client(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            import redis.asyncio

            # Blocking: a burst of concurrent calls (many sessions at once) waits for one of
            # the pool's connections instead of failing with "too many connections".
            pool = redis.asyncio.BlockingConnectionPool.from_url(
                self.url,
                max_connections=self.MAX_CONNECTIONS,
                timeout=self.timeout,
                socket_timeout=self.timeout,
                socket_connect_timeout=self.timeout,
            )
            self._client = redis.asyncio.Redis(connection_pool=pool)
            self._loop = loop
        return self._client

    def error(self, what: str, error: BaseException) -> BackendError:
        return BackendError(f"{what}: Redis at {self.url}: {error or type(error).__name__}")

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None and self._loop is asyncio.get_running_loop():
            await client.aclose()


def configure(settings: LibrarySettings, data_dir: Path) -> None:
    """Point rate() and the datastore at the backends ``settings`` names, and the scanners at
    their daemons. Takes effect for the next call; state already kept stays where it is (a
    backend switch starts afresh)."""
    # By module path: ``mailwarden.lib.rate`` and ``.datastore`` are also the names of what
    # the package exports (the function and the store), which shadow the modules there.
    from mailwarden.lib.datastore import configure as configure_datastore
    from mailwarden.lib.rate import configure as configure_rate
    from mailwarden.lib.scanners import configure as configure_scanners

    configure_rate(settings, data_dir)
    configure_datastore(settings, data_dir)
    configure_scanners(settings)
