"""One listener (a ``[[servers]]`` entry): its sockets, settings, script and live sessions.

Holds what sessions share: connection limits (total and per client IP), the idle-timeout sweep
(one timer per server rather than one per connection), the TLS context, and the script that new
connections pick up. Reload swaps settings and script for new connections only.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import logging
import os
import socket
import ssl
import time
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

from mailwarden.policy.script import PolicyScript
from mailwarden.smtp import replies
from mailwarden.smtp.protocol import ProtocolSettings
from mailwarden.smtp.replies import Reply
from mailwarden.smtp.session import SmtpSession
from mailwarden.spool.store import SpoolStore

if TYPE_CHECKING:
    from mailwarden.config import ServerSettings, SpoolSettings

log = logging.getLogger("mailwarden.smtp")

_SWEEP_INTERVAL = 1.0


def build_ssl_context(
    certificate: os.PathLike[str] | str, key: os.PathLike[str] | str
) -> ssl.SSLContext:
    """Server TLS context. Raises ssl.SSLError or OSError if the files are unusable."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificate, key)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # No client certificate is requested: asking with CERT_OPTIONAL makes the handshake fail
    # for clients whose certificate no local CA vouches for (many MTAs send their own), and
    # opportunistic STARTTLS must not turn into a refusal (RFC 3207 §4.1).
    context.verify_mode = ssl.CERT_NONE
    return context


class SmtpServer:
    def __init__(
        self,
        settings: ServerSettings,
        node_hostname: str,
        script: PolicyScript,
        spool: SpoolStore,
        spool_settings: SpoolSettings,
        worker: int = 0,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.spool = spool
        self.spool_settings = spool_settings
        self.worker = worker
        self.sessions: set[SmtpSession] = set()
        self.per_ip: Counter[str] = Counter()
        self.shutting_down = False
        self._servers: list[asyncio.base_events.Server] = []
        self._connection_ids = itertools.count(1)
        self._message_ids = itertools.count(1)
        self._sweeper: asyncio.TimerHandle | None = None
        self.apply(settings, node_hostname, script)

    def apply(self, settings: ServerSettings, node_hostname: str, script: PolicyScript) -> None:
        """Take new settings and script; connections already open keep what they started with.

        Raises ssl.SSLError or OSError if the TLS files cannot be loaded (nothing changes then).
        """
        ssl_context = None
        if settings.tls_certificate is not None and settings.tls_key is not None:
            ssl_context = build_ssl_context(settings.tls_certificate, settings.tls_key)
        self.settings = settings
        self.protocol_settings: ProtocolSettings = settings.protocol_settings(node_hostname)
        self.script = script
        self.ssl_context = ssl_context
        self.local_domains = frozenset(d.lower().rstrip(".") for d in settings.local_domains)
        self.trusted_networks = [ipaddress.ip_network(n) for n in settings.trusted_networks]
        self._trusted_cache: dict[str, bool] = {}

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
            session._wake()  # idle sessions see shutting_down and say 421
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

    def admit(self, session: SmtpSession) -> Reply | None:
        """Register a new connection, or the 421 that refuses it (limits, shutdown)."""
        if self.shutting_down:
            return replies.SERVICE_SHUTTING_DOWN
        limits = self.settings.limits
        if len(self.sessions) >= limits.connections:
            return replies.TOO_MANY_CONNECTIONS
        ip = session._remote_ip
        if self.per_ip[ip] >= limits.connections_per_ip:
            return replies.TOO_MANY_CONNECTIONS_FROM_IP
        self.sessions.add(session)
        self.per_ip[ip] += 1
        return None

    def forget(self, session: SmtpSession) -> None:
        if session in self.sessions:
            self.sessions.discard(session)
            ip = session._remote_ip
            self.per_ip[ip] -= 1
            if self.per_ip[ip] <= 0:
                del self.per_ip[ip]

    def is_trusted(self, ip: str) -> bool:
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

    def next_connection_id(self) -> str:
        return f"{self.worker:x}{next(self._connection_ids):x}"

    def next_message_id(self) -> str:
        # Time-ordered and unique across workers and restarts: microseconds, worker, counter.
        return f"{time.time_ns() // 1000:x}{self.worker:02x}{next(self._message_ids) & 0xFFFF:04x}"

    def _sweep(self) -> None:
        """Close sessions idle past their timeout (RFC 5321 §4.5.3.2): 421 4.4.2."""
        now = self.loop.time()
        limits = self.settings.limits
        for session in list(self.sessions):
            if session.busy:
                if session.hook_deadline and now > session.hook_deadline:
                    session.expire_hook()
                continue
            timeout = limits.data_timeout if session.core.in_data else limits.command_timeout
            if now - session.last_activity > timeout:
                log.info("connection %s: timeout", session.conn.id if session.conn else "?")
                session.expire(replies.TIMEOUT, "timeout")
        self._sweeper = self.loop.call_later(_SWEEP_INTERVAL, self._sweep)
