"""A worker: one event loop serving every listener, with its own spool shard.

Start-up order (see mailwarden.node): bind, drop privileges, arm the parent-death signal, open
the spool shard, load the scripts, listen, report ready. Then it serves until SIGTERM/SIGINT,
its supervisor's death, or reloads on SIGHUP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path

from mailwarden import logs, stats
from mailwarden.auth.passwords import PasswordFileError
from mailwarden.config import Config, ConfigError, ServerSettings, load_config
from mailwarden.control import QUEUE_WAKE_SIGNAL
from mailwarden.lib import backends as lib_backends
from mailwarden.lib import dns as lib_dns
from mailwarden.lib import dns_cache as lib_dns_cache
from mailwarden.metrics.node import SERIES_INTERVAL, NodeMetrics
from mailwarden.node.delivery import message_id_source, new_manager, reconfigure
from mailwarden.node.errors import StartupError
from mailwarden.node.link import CONTROL_SIGNALS, SUPERVISOR_GONE_SIGNAL, SupervisorLink
from mailwarden.node.listeners import bind_listeners
from mailwarden.node.notify import notify, notify_reloading
from mailwarden.node.privileges import Identity, check_writable, drop_privileges
from mailwarden.node.reload import (
    check_certificates,
    check_password_files,
    restart_only_changes,
)
from mailwarden.node.scripts import load_scripts
from mailwarden.policy.script import PolicyScript, ScriptError
from mailwarden.queue.manager import QueueManager
from mailwarden.smtp.server import SmtpServer
from mailwarden.smtp.server_tls import TlsSetupError
from mailwarden.spool.errors import SpoolError
from mailwarden.spool.store import SpoolStore
from mailwarden.tlsrpt import recorder as tls_reports
from mailwarden.tlsrpt.daily import DailyReports

# One logger for the whole node, so that log lines read as they always have.
log = logging.getLogger("mailwarden.node")

# Seconds an orphaned worker gives transactions in flight (never more than shutdown_grace):
# whoever restarts the node must find the port free within about a second.
ORPHAN_GRACE = 1.0


class Worker:
    """One event loop serving every listener, with its own spool shard."""

    def __init__(
        self,
        config: Config,
        config_path: str | None,
        index: int,
        reuse_port: bool,
        identity: Identity | None = None,
        link: SupervisorLink | None = None,
    ):
        self.config = config
        self.started_config = config  # what restart-only keys are compared with
        self.config_path = config_path
        self.index = index
        self.reuse_port = reuse_port
        self.identity = identity
        self.link = link
        self.servers: dict[str, SmtpServer] = {}
        self.bound_listen: dict[str, list[str]] = {}  # the addresses each server was bound from
        self.stopping = asyncio.Event()
        self.orphaned = False
        self.queue: QueueManager | None = None
        self.tls_daily: DailyReports | None = None
        # Only a worker without a supervisor serves /metrics and records the series itself.
        self.metrics: NodeMetrics | None = None

    async def run(self) -> None:
        """Start (raising StartupError if the worker cannot), serve until told to stop."""
        spool = await self._start()
        try:
            self._report_ready()
            await self.stopping.wait()
            await self._stop()
            await self._stop_tls_reports()
        finally:
            spool.close()
            with contextlib.suppress(OSError):
                stats.publish(Path(self.config.node.data_dir), self.index, self._gauges())
            if self.metrics is not None:
                self.metrics.close()

    # The metrics endpoint's Watcher, on this worker's event loop.
    def watch(self, fd: int, callback: Callable[[], None]) -> None:
        asyncio.get_running_loop().add_reader(fd, callback)

    def unwatch(self, fd: int) -> None:
        with contextlib.suppress(ValueError, OSError, RuntimeError):
            asyncio.get_running_loop().remove_reader(fd)

    def _tick_metrics(self) -> None:
        if self.metrics is None:
            return
        self.metrics.tick()
        if not self.stopping.is_set():
            asyncio.get_running_loop().call_later(SERIES_INTERVAL, self._tick_metrics)

    def _refresh_stats(self) -> None:
        with contextlib.suppress(OSError):  # what cannot be published now was, earlier
            stats.publish(Path(self.config.node.data_dir), self.index, self._gauges())

    async def _start(self) -> SpoolStore:
        config = self.config
        sockets = bind_listeners(config, self.reuse_port)
        spool: SpoolStore | None = None
        try:
            if self.link is None:  # bound before the drop, like the SMTP listeners
                self.metrics = NodeMetrics(config, self, refresh=self._refresh_stats)
            if self.identity is not None:
                drop_privileges(self.identity)
            if self.link is not None:
                self.link.arm_parent_death_signal()
            check_writable(config, self.index)
            spool = _open_spool(config, self.index)
            _configure_library(config)
            try:
                scripts = load_scripts(config)
            except ScriptError as error:
                raise StartupError(str(error)) from None
            for index, settings in enumerate(config.servers):
                server = _new_server(config, index, settings, scripts[settings.id], spool, self)
                await server.start(self.reuse_port, sockets.pop(settings.id))
                self.servers[settings.id] = server
                self.bound_listen[settings.id] = list(settings.listen)
                log.info(
                    "worker %d: server %s listening on %s",
                    self.index,
                    settings.id,
                    ", ".join(settings.listen),
                )
            self.queue = new_manager(config, spool, self.index, self._script_for)
            await self.queue.start()
            self._start_tls_reports(spool)
        except BaseException:
            if self.metrics is not None and self.metrics.endpoint is not None:
                self.metrics.endpoint.close()
                self.metrics = None
            if self.queue is not None:
                await self.queue.stop(0)
            for server in self.servers.values():
                await server.stop(0)
            for rest in sockets.values():
                for sock in rest:
                    sock.close()
            if spool is not None:
                spool.close()
            raise
        self._handle_signals()
        self._flush_logs()
        self._publish_stats()
        if self.metrics is not None:
            asyncio.get_running_loop().call_later(SERIES_INTERVAL, self._tick_metrics)
        return spool

    def _start_tls_reports(self, spool: SpoolStore) -> None:
        """Count outbound TLS sessions (RFC 8460); worker 0 also sends the daily reports."""
        settings = self.config.tlsrpt
        if not settings.enabled:
            return
        tls_reports.current().start(Path(self.config.node.data_dir), settings.flush_interval)
        if self.index == 0 and settings.send:
            self.tls_daily = DailyReports(
                self.config, spool.commit, message_id_source(0x80 | self.index)
            )
            self.tls_daily.start()

    async def _stop_tls_reports(self) -> None:
        """After delivery stopped: the last sessions' counts are written too."""
        if self.tls_daily is not None:
            await self.tls_daily.stop()
        await tls_reports.current().stop()

    def _handle_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop_requested)
        loop.add_signal_handler(signal.SIGHUP, self._reload_requested)
        loop.add_signal_handler(QUEUE_WAKE_SIGNAL, self._queue_wake_requested)
        if self.link is not None:
            loop.add_signal_handler(SUPERVISOR_GONE_SIGNAL, self._supervisor_gone)
            loop.add_reader(self.link.watch, self._watch_supervisor)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, CONTROL_SIGNALS)  # handled from now on

    def _report_ready(self) -> None:
        if self.link is None:
            log.info("node ready: 1 worker")
            logs.flush_all()
            notify("READY=1", f"MAINPID={os.getpid()}")
            return
        self.link.report("ready")
        if self.link.reload_at_start:
            # A replacement forked after a reload: the supervisor's configuration is the one
            # the node started with, so take what the others took on SIGHUP.
            self._reload_requested()

    def _queue_wake_requested(self) -> None:
        if self.queue is not None:
            self.queue.wake()

    def _stop_requested(self) -> None:
        if self.link is None and not self.stopping.is_set():
            notify("STOPPING=1")
        self.stopping.set()

    def _reload_requested(self) -> None:
        if self.link is None:
            notify_reloading()
        self.reload()
        if self.link is None:
            notify("READY=1")
        else:
            self.link.report("reloaded")

    def _watch_supervisor(self) -> None:
        assert self.link is not None
        try:
            data = os.read(self.link.watch, 64)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._supervisor_gone()

    def _supervisor_gone(self) -> None:
        if self.orphaned:
            return
        self.orphaned = True
        assert self.link is not None
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(self.link.watch)
        log.warning("worker %d: the supervisor is gone; stopping", self.index)
        self.stopping.set()

    async def _stop(self) -> None:
        """Stop listening at once; transactions in flight get the grace, then 421. A commit in
        progress either finishes (and its 250 is sent) or its client gets no reply: a 250 is
        only ever sent after the spool's commit returned."""
        grace = self.config.node.shutdown_grace
        if self.orphaned:
            grace = min(grace, ORPHAN_GRACE)
        log.info("worker %d: stopping", self.index)
        parts = [s.stop(grace) for s in self.servers.values()]
        if self.queue is not None:
            parts.append(self.queue.stop(grace))
        stopping = asyncio.gather(*parts)
        if not self.orphaned:
            await stopping
            return
        try:  # nobody may wait for an orphan: leave even if a session does not
            await asyncio.wait_for(stopping, grace + 0.5)
        except TimeoutError:
            log.warning("worker %d: leaving with sessions still open", self.index)

    def _script_for(self, server_id: str) -> PolicyScript | None:
        """The script of the listener that accepted a message: its delivery hooks steer it.
        A listener removed since then: the first listener's script."""
        server = self.servers.get(server_id)
        if server is None and self.servers:
            server = next(iter(self.servers.values()))
        return server.snapshot.script if server is not None else None

    def _publish_stats(self) -> None:
        """Publish the counters for ``mailwarden stats`` now and again (see mailwarden.stats)."""
        try:
            stats.publish(Path(self.config.node.data_dir), self.index, self._gauges())
        except OSError as error:
            log.warning("worker %d: cannot publish statistics: %s", self.index, error)
        if not self.stopping.is_set():
            asyncio.get_running_loop().call_later(stats.PUBLISH_INTERVAL, self._publish_stats)

    def _gauges(self) -> dict[str, object]:
        """What is read off the servers and the queue when publishing, not counted per event."""
        gauges: dict[str, object] = {
            "connections_current": sum(len(s.sessions) for s in self.servers.values())
        }
        if self.queue is not None:
            gauges["delivery"] = {
                "delivered": self.queue.delivered,
                "deferred": self.queue.deferred,
                "bounced": self.queue.bounced,
            }
        return gauges

    def _flush_logs(self) -> None:
        """Write buffered log lines now and again (see mailwarden.logs)."""
        logs.flush_all()
        if not self.stopping.is_set():
            asyncio.get_running_loop().call_later(logs.FLUSH_INTERVAL, self._flush_logs)

    def reload(self) -> None:
        """SIGHUP: new configuration and scripts for new connections, or nothing on failure."""
        try:
            config = load_config(self.config_path)
            scripts = load_scripts(config)
            check_certificates(config)  # all or nothing
            check_password_files(config)
            for settings in config.servers:
                if settings.id not in self.servers:
                    log.warning("reload: new server %s needs a restart to listen", settings.id)
                    continue
                server = self.servers[settings.id]
                bound = self.bound_listen[settings.id]
                if settings.listen != bound:
                    # Compared with what is bound, not with the previous file: changing the
                    # addresses and changing them back needs no restart.
                    log.warning(
                        "reload: servers[%s].listen %s differs from the bound %s; "
                        "new listen addresses need a restart",
                        settings.id,
                        ", ".join(settings.listen),
                        ", ".join(bound),
                    )
                server.apply(
                    settings,
                    config.node.hostname,
                    scripts[settings.id],
                    config.spool,
                    config.queue.hold_retention,
                )
            self._apply_node_settings(config)
            if self.queue is not None:
                reconfigure(self.queue, config)
        except (ConfigError, ScriptError) as error:
            log.error("reload failed, keeping the running configuration: %s", error)
            return
        except (OSError, ValueError) as error:
            log.error("reload failed, keeping the running configuration: %s", error)
            return
        log.info("worker %d: configuration and scripts reloaded", self.index)

    def _apply_node_settings(self, config: Config) -> None:
        """Take the reloadable [node] and [spool] keys; say which ones need a restart."""
        for key in restart_only_changes(self.started_config, config):
            log.warning("reload: %s changes only at restart", key)
        logging.getLogger().setLevel(getattr(logging, config.node.log_level.upper()))
        _configure_library(config)
        self.config = config  # shutdown_grace, hostname, log_level, memory_threshold apply now


def _configure_library(config: Config) -> None:
    """Point the script library's resolver at [node] dns_servers (validated by the config),
    its rate limits and datastore at the [library] backends."""
    lib_dns.configure(config.node.dns_servers, config.node.dns_timeout)
    lib_dns_cache.configure(config.library.dns_cache_size)
    lib_backends.configure(config.library, config.node.data_dir)


def _open_spool(config: Config, index: int) -> SpoolStore:
    spool = SpoolStore(
        config.spool.path,
        index,
        fsync=config.spool.fsync,
        max_batch=config.spool.group_commit_max_batch,
    )
    try:
        spool.open()
    except SpoolError as error:
        cause = error.__cause__ if error.__cause__ is not None else error
        raise StartupError(
            config.describe_problem(("spool", "path"), f"cannot open spool {spool.path}: {cause}")
        ) from None
    return spool


def _new_server(
    config: Config,
    index: int,
    settings: ServerSettings,
    script: PolicyScript,
    spool: SpoolStore,
    worker: Worker,
) -> SmtpServer:
    try:
        return SmtpServer(
            settings,
            config.node.hostname,
            script,
            spool,
            config.spool,
            worker=worker.index,
            hold_retention=config.queue.hold_retention,
        )
    except TlsSetupError as error:
        path = ("servers", index, *error.key)
        raise StartupError(config.describe_problem(path, error.problem)) from None
    except PasswordFileError as error:
        path = ("servers", index, "auth_password_file")
        raise StartupError(config.describe_problem(path, str(error))) from None


def _event_loop_factory() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported OS
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run_worker(
    config: Config,
    config_path: str | None,
    index: int,
    reuse_port: bool,
    identity: Identity | None = None,
    link: SupervisorLink | None = None,
) -> int:
    """Run one worker until it is told to stop. Raises StartupError if it cannot start."""
    signal.pthread_sigmask(signal.SIG_BLOCK, CONTROL_SIGNALS)  # until Worker.run handles them
    logs.set_worker(index)
    worker = Worker(config, config_path, index, reuse_port, identity, link)
    try:
        with asyncio.Runner(loop_factory=_event_loop_factory) as runner:
            runner.run(worker.run())
    finally:
        logs.flush_all()  # a forked worker leaves with os._exit, which skips logging's own
    return 0
