"""One listener (a ``[[servers]]`` entry): its sockets, settings, script and live sessions.

Holds what sessions share: connection limits (total and per client IP), the idle-timeout sweep
(one timer per server rather than one per connection), and the :class:`ListenerSnapshot` that new
connections pick up: settings, TLS context, spool settings and script, frozen together. Reload
builds a new snapshot for new connections only; an open connection keeps the one it started with.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import itertools
import logging
import socket
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from mailwarden.auth.custom import safe_in_clear
from mailwarden.auth.passwords import PasswordFile
from mailwarden.policy.script import PolicyScript
from mailwarden.queue.retention import DEFAULT_RETENTION
from mailwarden.smtp import replies
from mailwarden.smtp.protocol import ProtocolSettings
from mailwarden.smtp.replies import Reply
from mailwarden.smtp.server_tls import ServerTls, build_server_tls
from mailwarden.smtp.session import SmtpSession
from mailwarden.spool.store import SpoolStore

if TYPE_CHECKING:
    from mailwarden.config import ServerSettings, SpoolSettings

log = logging.getLogger("mailwarden.smtp")

_SWEEP_INTERVAL = 1.0

# Worker indices run up to 1023 (node.workers <= 1024): three hex digits, always all three, so
# that the worker field of a connection id has a fixed width and ids of two workers never meet.
_WORKER_ID_DIGITS = 3

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def connection_id(worker: int, number: int) -> str:
    """The id of connection ``number`` of ``worker``: fixed-width worker field, then the count.

    Unique across workers because the worker field always has the same width: two ids are equal
    only if both fields are (``1`` + ``10`` and ``11`` + ``0`` would otherwise both be ``110``).
    """
    if not 0 <= worker < 16**_WORKER_ID_DIGITS:
        raise ValueError(f"worker index {worker} does not fit {_WORKER_ID_DIGITS} hex digits")
    return f"{worker:0{_WORKER_ID_DIGITS}x}{number:x}"


@dataclass(frozen=True, slots=True)
class ListenerSnapshot:
    """Everything a connection needs from its listener, frozen when the listener (re)loads.

    A session takes the snapshot current at ``connection_made`` and uses it for its whole life
    (limits, timeouts, local domains, trusted networks, TLS context, spool settings, script), so a
    reload never changes the rules in the middle of a conversation.
    """

    settings: ServerSettings
    protocol_settings: ProtocolSettings
    local_domains: frozenset[str]
    trusted_networks: tuple[Network, ...]
    tls: ServerTls | None  # None: no certificate, no TLS
    spool_settings: SpoolSettings
    script: PolicyScript
    passwords: PasswordFile | None = None  # auth_password_file, read afresh at each (re)load
    hold_retention: float = DEFAULT_RETENTION  # [queue] hold_retention: a data hook's Hold
    _trusted_cache: dict[str, bool] = field(default_factory=dict, compare=False, repr=False)

    def is_trusted(self, ip: str) -> bool:
        """``ip`` is in ``trusted_networks`` (answers are cached: the same clients come back)."""
        trusted = self._trusted_cache.get(ip)
        if trusted is None:
            if len(self._trusted_cache) > 65536:
                self._trusted_cache.clear()
            trusted = self._trusted_cache[ip] = self._in_trusted_networks(ip)
        return trusted

    def _in_trusted_networks(self, ip: str) -> bool:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(address in network for network in self.trusted_networks)


@runtime_checkable
class TrackedSession(Protocol):
    """All the listener knows of a session (as smtpping's ``Watcher`` is all its loop knows of a
    worker): the few members below. Timeouts, hooks and flow control stay the session's own."""

    remote_ip: str  # admission and ``connections_per_ip`` count by it

    def wake(self) -> None:
        """Look at the listener again (it is shutting down: an idle session says 421)."""

    def sweep(self, now: float) -> None:
        """The once-a-second check: expire a hook past its deadline or an idle connection."""

    def expire(self, reply: Reply, reason: str) -> None:
        """Close now with ``reply`` (the shutdown grace time is over)."""


def _with_script_mechanisms(settings: ProtocolSettings, script: PolicyScript) -> ProtocolSettings:
    """The listener's built-in mechanisms, then the script's own (``SASL_MECHANISMS``); those
    a script marks ``safe_in_clear`` are offered before TLS too."""
    if not script.mechanisms:
        return settings
    return dataclasses.replace(
        settings,
        auth_mechanisms=settings.auth_mechanisms + tuple(script.mechanisms),
        auth_clear_mechanisms=frozenset(
            name for name, factory in script.mechanisms.items() if safe_in_clear(factory)
        ),
    )


class SmtpServer:
    def __init__(
        self,
        settings: ServerSettings,
        node_hostname: str,
        script: PolicyScript,
        spool: SpoolStore,
        spool_settings: SpoolSettings,
        worker: int = 0,
        hold_retention: float = DEFAULT_RETENTION,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.spool = spool
        self.worker = worker
        self.sessions: set[TrackedSession] = set()
        self.per_ip: Counter[str] = Counter()
        self.shutting_down = False
        self._servers: list[asyncio.base_events.Server] = []
        self._connection_ids = itertools.count(1)
        self._message_ids = itertools.count(1)
        self._sweeper: asyncio.TimerHandle | None = None
        self.snapshot: ListenerSnapshot
        self.apply(settings, node_hostname, script, spool_settings, hold_retention)

    def apply(
        self,
        settings: ServerSettings,
        node_hostname: str,
        script: PolicyScript,
        spool_settings: SpoolSettings | None = None,
        hold_retention: float | None = None,
    ) -> None:
        """Take new settings, script, spool settings and hold retention (None: keep the
        current ones) for new connections; connections already open keep the snapshot they
        started with.

        Raises TlsSetupError (a ValueError naming key and file) if the TLS settings or files
        cannot be used, PasswordFileError (a ValueError naming file and line) if the password
        file cannot; nothing changes then.
        """
        tls = build_server_tls(settings)
        path = settings.auth_password_file
        passwords = PasswordFile(path) if path is not None else None
        if spool_settings is None:
            spool_settings = self.snapshot.spool_settings
        if hold_retention is None:
            hold_retention = self.snapshot.hold_retention
        self.snapshot = ListenerSnapshot(
            settings=settings,
            protocol_settings=_with_script_mechanisms(
                settings.protocol_settings(node_hostname), script
            ),
            local_domains=frozenset(d.lower().rstrip(".") for d in settings.local_domains),
            trusted_networks=tuple(ipaddress.ip_network(n) for n in settings.trusted_networks),
            tls=tls,
            spool_settings=spool_settings,
            script=script,
            passwords=passwords,
            hold_retention=hold_retention,
        )

    @property
    def settings(self) -> ServerSettings:
        """The settings new connections get (and admission and listening follow)."""
        return self.snapshot.settings

    @property
    def spool_settings(self) -> SpoolSettings:
        return self.snapshot.spool_settings

    # --- sockets ---------------------------------------------------------------------------

    async def start(self, reuse_port: bool, sockets: Sequence[socket.socket] = ()) -> None:
        """Listen on every configured address, or on ``sockets`` when given (bound by the node
        before it dropped root, see mailwarden.node). Raises OSError if one cannot be bound."""
        for sock in sockets:
            server = await self.loop.create_server(
                lambda: SmtpSession(self), sock=sock, backlog=1024
            )
            self._servers.append(server)
        for host, port in [] if sockets else self.settings.addresses:
            server = await self.loop.create_server(
                lambda: SmtpSession(self),
                host,
                port,
                reuse_address=True,
                reuse_port=reuse_port,
                backlog=1024,
            )
            self._servers.append(server)
        self._sweeper = self.loop.call_later(_SWEEP_INTERVAL, self._sweep)

    async def stop(self, grace: float) -> None:
        """Stop accepting; let transactions in flight finish within ``grace`` seconds, then
        close what is left with 421 4.3.2. Idle sessions are closed at once."""
        self.shutting_down = True
        for server in self._servers:
            server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for session in list(self.sessions):
            session.wake()  # idle sessions see shutting_down and say 421
        deadline = time.monotonic() + grace
        while self.sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for session in list(self.sessions):
            session.expire(replies.SERVICE_SHUTTING_DOWN, "shutdown grace time over")
        for _ in range(40):
            if not self.sessions:
                break
            await asyncio.sleep(0.05)

    # --- admission and bookkeeping ---------------------------------------------------------

    def admit(self, session: TrackedSession) -> Reply | None:
        """Register a new connection, or the 421 that refuses it (limits, shutdown)."""
        if self.shutting_down:
            return replies.SERVICE_SHUTTING_DOWN
        limits = self.settings.limits
        if len(self.sessions) >= limits.connections:
            return replies.TOO_MANY_CONNECTIONS
        ip = session.remote_ip
        if self.per_ip[ip] >= limits.connections_per_ip:
            return replies.TOO_MANY_CONNECTIONS_FROM_IP
        self.sessions.add(session)
        self.per_ip[ip] += 1
        return None

    def forget(self, session: TrackedSession) -> None:
        if session in self.sessions:
            self.sessions.discard(session)
            ip = session.remote_ip
            self.per_ip[ip] -= 1
            if self.per_ip[ip] <= 0:
                del self.per_ip[ip]

    def next_connection_id(self) -> str:
        return connection_id(self.worker, next(self._connection_ids))

    def next_message_id(self) -> str:
        # Time-ordered and unique across workers and restarts: microseconds, worker, counter.
        return f"{time.time_ns() // 1000:x}{self.worker:02x}{next(self._message_ids) & 0xFFFF:04x}"

    def _sweep(self) -> None:
        """One timer for all sessions: each checks its own hook deadline and idle timeout
        (RFC 5321 §4.5.3.2), with the timeouts of the snapshot it started with."""
        now = self.loop.time()
        for session in list(self.sessions):
            session.sweep(now)
        self._sweeper = self.loop.call_later(_SWEEP_INTERVAL, self._sweep)
