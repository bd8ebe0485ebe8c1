"""Running a node: worker processes, each an event loop with every configured listener.

One worker serves everything on one core. With ``node.workers`` > 1 the supervisor forks that
many workers; each binds the listeners with SO_REUSEPORT (the kernel spreads connections) and
owns its own spool shard. Signals: SIGTERM/SIGINT stop gracefully (in-flight transactions get
``node.shutdown_grace`` seconds), SIGHUP reloads configuration and scripts; a reload that fails
keeps what is running and logs why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path

from mailwarden import logs, stats
from mailwarden.config import Config, ConfigError, load_config
from mailwarden.policy.script import DEFAULT_SCRIPT, PolicyScript, ScriptError, load_script
from mailwarden.smtp.server import SmtpServer, build_ssl_context
from mailwarden.spool.store import SpoolStore

log = logging.getLogger("mailwarden.node")

# Held back (blocked) while a worker starts, until its event loop handles them: a SIGTERM that
# arrived while the spool was opening used to kill the worker with the default action, and the
# node then exited 1 instead of stopping cleanly. Blocked signals stay pending, not lost.
_CONTROL_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


def pid_file(config: Config) -> Path:
    return Path(config.node.data_dir) / "mailwarden.pid"


def load_scripts(config: Config) -> dict[str, PolicyScript]:
    """Every server's script, loaded afresh. Raises ScriptError naming the file and line."""
    scripts: dict[str, PolicyScript] = {}
    for server in config.servers:
        scripts[server.id] = load_script(server.script) if server.script else DEFAULT_SCRIPT
    return scripts


class Worker:
    """One event loop serving every listener, with its own spool shard."""

    def __init__(self, config: Config, config_path: str | None, index: int, reuse_port: bool):
        self.config = config
        self.config_path = config_path
        self.index = index
        self.reuse_port = reuse_port
        self.servers: dict[str, SmtpServer] = {}
        self.stopping = asyncio.Event()

    async def run(self, scripts: dict[str, PolicyScript]) -> None:
        config = self.config
        spool = SpoolStore(
            config.spool.path,
            self.index,
            fsync=config.spool.fsync,
            max_batch=config.spool.group_commit_max_batch,
        )
        spool.open()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        self._flush_logs()
        self._publish_stats()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _CONTROL_SIGNALS)  # handled from now on
        try:
            for settings in config.servers:
                server = SmtpServer(
                    settings,
                    config.node.hostname,
                    scripts[settings.id],
                    spool,
                    config.spool,
                    worker=self.index,
                )
                await server.start(self.reuse_port)
                self.servers[settings.id] = server
                log.info(
                    "worker %d: server %s listening on %s",
                    self.index,
                    settings.id,
                    ", ".join(settings.listen),
                )
            await self.stopping.wait()
            log.info("worker %d: stopping", self.index)
            await asyncio.gather(
                *(s.stop(self.config.node.shutdown_grace) for s in self.servers.values())
            )
        finally:
            spool.close()
            with contextlib.suppress(OSError):
                stats.publish(Path(self.config.node.data_dir), self.index)

    def _publish_stats(self) -> None:
        """Publish the counters for ``mailwarden stats`` now and again (see mailwarden.stats)."""
        try:
            stats.publish(Path(self.config.node.data_dir), self.index)
        except OSError as error:
            log.warning("worker %d: cannot publish statistics: %s", self.index, error)
        if not self.stopping.is_set():
            asyncio.get_running_loop().call_later(stats.PUBLISH_INTERVAL, self._publish_stats)

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
            # All or nothing: load every certificate before switching any listener, so that an
            # unusable one on a later listener cannot leave earlier ones already switched.
            for settings in config.servers:
                if settings.tls_certificate is not None and settings.tls_key is not None:
                    try:
                        build_ssl_context(settings.tls_certificate, settings.tls_key)
                    except OSError as error:  # ssl.SSLError too; say which files
                        raise ValueError(
                            f"servers[{settings.id}]: cannot use tls_certificate "
                            f"{settings.tls_certificate} with tls_key {settings.tls_key}: {error}"
                        ) from None
            for settings in config.servers:
                if settings.id not in self.servers:
                    log.warning("reload: new server %s needs a restart to listen", settings.id)
                    continue
                server = self.servers[settings.id]
                if settings.listen != server.settings.listen:
                    log.warning("reload: new listen addresses of %s need a restart", settings.id)
                server.apply(settings, config.node.hostname, scripts[settings.id])
                server.spool_settings = config.spool
            self._apply_node_settings(config)
        except (ConfigError, ScriptError) as error:
            log.error("reload failed, keeping the running configuration: %s", error)
            return
        except (OSError, ValueError) as error:
            log.error("reload failed, keeping the running configuration: %s", error)
            return
        log.info("worker %d: configuration and scripts reloaded", self.index)

    def _apply_node_settings(self, config: Config) -> None:
        """Take the reloadable [node] and [spool] keys; say which ones need a restart."""
        old = self.config
        for key in ("data_dir", "workers"):
            if getattr(old.node, key) != getattr(config.node, key):
                log.warning("reload: node.%s changes only at restart", key)
        for key in ("path", "fsync", "group_commit_max_batch"):
            if getattr(old.spool, key) != getattr(config.spool, key):
                log.warning("reload: spool.%s changes only at restart", key)
        logging.getLogger().setLevel(getattr(logging, config.node.log_level.upper()))
        self.config = config  # shutdown_grace, hostname, log_level, memory_threshold apply now


def _pin_to_cpu(index: int) -> None:
    """Keep worker ``index`` on one of the CPUs this node may use (round robin). Where the
    system refuses (no sched_setaffinity), the worker simply runs unpinned."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpus[index % len(cpus)]})
    except (AttributeError, OSError) as error:
        log.warning("worker %d: cannot pin to a CPU: %s", index, error)


def _event_loop_factory() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported OS
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run_worker(config: Config, config_path: str | None, index: int, reuse_port: bool) -> int:
    signal.pthread_sigmask(signal.SIG_BLOCK, _CONTROL_SIGNALS)  # until Worker.run handles them
    scripts = load_scripts(config)
    worker = Worker(config, config_path, index, reuse_port)
    try:
        with asyncio.Runner(loop_factory=_event_loop_factory) as runner:
            runner.run(worker.run(scripts))
    finally:
        logs.flush_all()  # a forked worker leaves with os._exit, which skips logging's own
    return 0


def run(config_path: str | None) -> int:
    """``mailwarden run``: load and check everything, then serve until SIGTERM. Exit code 0 on
    a clean stop, 1 when the configuration, a script or a listener address is unusable."""
    config = load_config(config_path)
    _configure_logging(config.node.log_level)
    config.check_files()  # a missing script, certificate or key: fail now, naming the key
    load_scripts(config)  # fail before forking, with the file and line
    Path(config.node.data_dir).mkdir(parents=True, exist_ok=True)
    pid_path = pid_file(config)
    pid_path.write_text(f"{os.getpid()}\n")
    for stale in stats.stats_dir(Path(config.node.data_dir)).glob("worker-*.json"):
        stale.unlink(missing_ok=True)  # counters of an earlier run, maybe with more workers
    workers = config.node.workers or os.cpu_count() or 1
    try:
        if workers == 1:
            return run_worker(config, config_path, 0, reuse_port=False)
        return _supervise(config, config_path, workers)
    finally:
        with contextlib.suppress(FileNotFoundError):
            pid_path.unlink()


def _supervise(config: Config, config_path: str | None, workers: int) -> int:
    """Fork the workers, pass signals on, and restart a worker that dies unexpectedly."""
    children: dict[int, int] = {}  # pid -> worker index
    stopping = False

    def spawn(index: int) -> None:
        logs.flush_all()  # or the child would write the parent's buffered lines again
        pid = os.fork()
        if pid == 0:
            signal.pthread_sigmask(signal.SIG_BLOCK, _CONTROL_SIGNALS)  # see _CONTROL_SIGNALS
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            code = 1
            try:
                if config.node.pin_workers:
                    _pin_to_cpu(index)
                code = run_worker(config, config_path, index, reuse_port=True)
            except BaseException:
                log.exception("worker %d crashed", index)
            finally:
                os._exit(code)
        children[pid] = index

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    for index in range(workers):
        spawn(index)
    exit_code = 0
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        index = children.pop(pid, None)
        if index is None:
            continue
        code = os.waitstatus_to_exitcode(status)
        if not stopping:
            log.error("worker %d exited with %d; restarting it", index, code)
            spawn(index)
        elif code != 0:
            exit_code = 1
    return exit_code


def _configure_logging(level: str) -> None:
    logs.configure(level)
