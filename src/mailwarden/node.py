"""Running a node: worker processes, each an event loop with every configured listener.

One worker serves everything on one core. With ``node.workers`` > 1 (the default, 0, means one
per core) a supervisor forks that many workers; each binds the listeners with SO_REUSEPORT (the
kernel spreads connections) and owns its own spool shard.

Start-up, in each worker: bind the listening sockets (as root where the ports need it), drop to
``node.user``/``node.group``, open the spool shard, load the policy scripts, start accepting,
and report "ready". Nothing an operator wrote runs as root unless ``node.user = "root"`` says so,
and no client is served before the drop. A worker that cannot start is a start-up error of the
whole node (exit 1 with the file and key); a worker that dies later is restarted with
exponential backoff.

Workers leave by themselves when the supervisor dies (kill -9, OOM killer): they watch a pipe
whose write end only the supervisor holds (EOF means it is gone, as Postfix's master does with
its children) and have a parent-death signal as well. They then stop listening at once and give
transactions in flight at most ``ORPHAN_GRACE`` seconds.

Signals: SIGTERM/SIGINT stop gracefully (in-flight transactions get ``node.shutdown_grace``
seconds), SIGHUP reloads configuration and scripts; a reload that fails keeps what is running and
logs why. With ``$NOTIFY_SOCKET`` set (systemd ``Type=notify``) the node reports READY=1,
RELOADING=1 and STOPPING=1 (sd_notify(3)).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import grp
import logging
import os
import pwd
import selectors
import signal
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

from mailwarden import logs, stats
from mailwarden.config import Config, ConfigError, ServerSettings, load_config
from mailwarden.policy.script import DEFAULT_SCRIPT, PolicyScript, ScriptError, load_script
from mailwarden.smtp.server import SmtpServer, build_ssl_context
from mailwarden.spool.errors import SpoolError
from mailwarden.spool.store import SpoolStore

log = logging.getLogger("mailwarden.node")

# Held back (blocked) while a worker starts, until its event loop handles them: a SIGTERM that
# arrived while the spool was opening used to kill the worker with the default action, and the
# node then exited 1 instead of stopping cleanly. Blocked signals stay pending, not lost.
_CONTROL_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}

# The parent-death signal of a worker (prctl PR_SET_PDEATHSIG). Not SIGKILL: the worker must
# still stop listening and let commits in progress finish, exactly as on EOF of the pipe.
_SUPERVISOR_GONE_SIGNAL = signal.SIGUSR1
_PR_SET_PDEATHSIG = 1

# Seconds an orphaned worker gives transactions in flight (never more than shutdown_grace):
# whoever restarts the node must find the port free within about a second.
ORPHAN_GRACE = 1.0

# Restarting a worker that died: the first after BACKOFF_FIRST seconds, doubling for each
# further death up to BACKOFF_MAX; a worker that stayed up STABLE_AFTER seconds starts over.
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 60.0
STABLE_AFTER = 30.0

# How long the supervisor waits for the workers to report a reload before telling the service
# manager it is ready again anyway, and for workers to stop after a failed start.
RELOAD_REPORT_TIMEOUT = 30.0
STOP_AFTER_FAILED_START = 5.0


class StartupError(Exception):
    """The node cannot start; the message is one line naming the file and key involved."""


def pid_file(config: Config) -> Path:
    return Path(config.node.data_dir) / "mailwarden.pid"


def load_scripts(config: Config) -> dict[str, PolicyScript]:
    """Every server's script, loaded afresh. Raises ScriptError naming the file and line."""
    scripts: dict[str, PolicyScript] = {}
    for server in config.servers:
        scripts[server.id] = load_script(server.script) if server.script else DEFAULT_SCRIPT
    return scripts


# --- the service manager (sd_notify without libsystemd) --------------------------------------


def notify(*fields: str) -> None:
    """Send ``fields`` (``READY=1`` …) to the service manager, if ``$NOTIFY_SOCKET`` names one:
    one datagram over AF_UNIX, ``@`` meaning the abstract namespace (sd_notify(3)). Failure to
    notify never stops the node; it is logged."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    target = "\0" + address[1:] if address.startswith("@") else address
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(fields).encode(), target)
    except OSError as error:
        log.warning("cannot notify the service manager at %s: %s", address, error)


def _notify_reloading() -> None:
    # systemd's reload protocol asks for the CLOCK_MONOTONIC time with RELOADING=1, so that it
    # can tell this reload from an earlier one (sd_notify(3), "RELOADING=1").
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notify("RELOADING=1", f"MONOTONIC_USEC={usec}")


# --- who the node serves as -------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """The account a worker switches to after binding its sockets."""

    user: str
    uid: int
    gid: int


def resolve_identity(config: Config) -> Identity | None:
    """The account to drop to, or None to stay who we are. Raises ConfigError naming
    ``node.user`` or ``node.group`` when the start must be refused."""
    user, group = config.node.user, config.node.group
    if os.geteuid() != 0:
        return _check_unprivileged(config, user, group)
    if user is None:
        raise ConfigError(
            [
                config.describe_problem(
                    ("node", "user"),
                    "refusing to serve clients as root; create an unprivileged account "
                    '(useradd --system mailwarden) and set user = "mailwarden" in [node], '
                    'or set user = "root" to insist',
                )
            ]
        )
    try:
        account = pwd.getpwnam(user)
    except KeyError:
        raise ConfigError(
            [
                config.describe_problem(
                    ("node", "user"),
                    f"no user {user!r} on this machine (create it: useradd --system {user})",
                )
            ]
        ) from None
    gid = account.pw_gid
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise ConfigError(
                [config.describe_problem(("node", "group"), f"no group {group!r} on this machine")]
            ) from None
    if account.pw_uid == 0:
        if group is not None:
            raise ConfigError(
                [
                    config.describe_problem(
                        ("node", "group"), "is only used with an unprivileged node.user"
                    )
                ]
            )
        return None  # root, said explicitly
    return Identity(user, account.pw_uid, gid)


def _check_unprivileged(config: Config, user: str | None, group: str | None) -> None:
    """Not root: the node runs as whoever started it; the keys may only name that account."""
    me = _user_name(os.geteuid())
    if user is not None and user != me:
        raise ConfigError(
            [
                config.describe_problem(
                    ("node", "user"),
                    f"cannot switch to {user!r} without root (running as {me!r}); "
                    f"leave it unset or set it to {me!r}",
                )
            ]
        )
    if group is not None and group != _group_name(os.getegid()):
        raise ConfigError(
            [
                config.describe_problem(
                    ("node", "group"),
                    f"cannot switch to group {group!r} without root (running as group "
                    f"{_group_name(os.getegid())!r}); leave it unset",
                )
            ]
        )
    return None


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def drop_privileges(identity: Identity) -> None:
    """Become ``identity`` for good: supplementary groups, then gid, then uid (the order
    matters: once the uid is dropped the groups can no longer be changed). Raises
    StartupError if the switch fails or root could be regained."""
    try:
        os.initgroups(identity.user, identity.gid)
        os.setgid(identity.gid)
        os.setuid(identity.uid)
    except OSError as error:
        raise StartupError(
            f"node.user: cannot switch to {identity.user} (uid {identity.uid}, "
            f"gid {identity.gid}): {error.strerror or error}"
        ) from None
    expected = ((identity.uid,) * 3, (identity.gid,) * 3)
    if (os.getresuid(), os.getresgid()) != expected:
        raise StartupError(f"node.user: switching to {identity.user} left another uid or gid")
    with contextlib.suppress(PermissionError):
        os.setuid(0)
        raise StartupError(f"node.user: after switching to {identity.user} root could be regained")


def prepare_directories(config: Config, identity: Identity | None) -> None:
    """Create the data and spool directories; those created here belong to ``identity``
    (root creates them, the workers write into them)."""
    for key, directory in (
        (("node", "data_dir"), Path(config.node.data_dir)),
        (("spool", "path"), Path(config.spool.path)),
    ):
        missing = []
        path = directory
        while not path.exists() and path != path.parent:
            missing.append(path)
            path = path.parent
        try:
            for path in reversed(missing):
                path.mkdir(exist_ok=True)
                if identity is not None:
                    os.chown(path, identity.uid, identity.gid)
            if not directory.is_dir():
                raise NotADirectoryError(f"{directory} is not a directory")
        except OSError as error:
            raise StartupError(
                config.describe_problem(
                    key, f"cannot create {directory}: {error.strerror or error}"
                )
            ) from None


def _check_writable(config: Config, index: int) -> None:
    """After the drop: the spool must be ours to write, or every message would get a 451."""
    spool = Path(config.spool.path)
    shard = spool / f"shard-{index}.db"
    for path in (spool, shard):
        if path.exists() and not os.access(path, os.W_OK):
            me = _user_name(os.getuid())
            raise StartupError(
                config.describe_problem(
                    ("spool", "path"),
                    f"{path} is not writable by {me} (the node's user); chown -R {me} {spool}",
                )
            )


# --- listening sockets ------------------------------------------------------------------------


def bind_listeners(config: Config, reuse_port: bool) -> dict[str, list[socket.socket]]:
    """Bind (not yet listen) every listener's addresses, so that a port below 1024 is taken
    while still root and no connection is queued before the worker is ready. Raises
    StartupError naming the ``listen`` entry that cannot be bound."""
    bound: dict[str, list[socket.socket]] = {}
    try:
        for index, server in enumerate(config.servers):
            bound[server.id] = []
            for position, (host, port) in enumerate(server.addresses):
                try:
                    bound[server.id].extend(_bind(host, port, reuse_port))
                except OSError as error:
                    raise StartupError(
                        config.describe_problem(
                            ("servers", index, "listen", position),
                            f"cannot listen on {server.listen[position]}: "
                            f"{error.strerror or error}",
                        )
                    ) from None
    except BaseException:
        for sockets in bound.values():
            for sock in sockets:
                sock.close()
        raise
    return bound


def _bind(host: str, port: int, reuse_port: bool) -> list[socket.socket]:
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    seen = set()
    try:
        for family, kind, proto, _, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                # [::] means IPv6 only; 0.0.0.0 is a listen entry of its own.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


# --- the link between a worker and its supervisor ---------------------------------------------


@dataclass
class SupervisorLink:
    """A worker's end of its supervisor's pipes: ``status`` to report on ("ready",
    "error TEXT", "reloaded"), ``watch`` whose EOF means the supervisor is gone."""

    status: int
    watch: int
    supervisor: int  # pid
    reload_at_start: bool = False

    def report(self, kind: str, text: str = "") -> None:
        line = f"{kind} {text}".strip().replace("\n", " ") + "\n"
        with contextlib.suppress(OSError):  # the supervisor is gone: nobody to tell
            os.write(self.status, line.encode()[:4000])  # one write under PIPE_BUF: atomic

    def arm_parent_death_signal(self) -> None:
        """Belt and braces beside the pipe. Set after the privilege drop, because changing
        credentials clears it (prctl(2)); the ppid check closes the race with a supervisor
        that died before the call."""
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(_SUPERVISOR_GONE_SIGNAL), 0, 0, 0)
        if os.getppid() != self.supervisor:
            raise StartupError("the supervisor exited while this worker started")


# --- a worker ---------------------------------------------------------------------------------


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

    async def run(self) -> None:
        """Start (raising StartupError if the worker cannot), serve until told to stop."""
        spool = await self._start()
        try:
            self._report_ready()
            await self.stopping.wait()
            await self._stop()
        finally:
            spool.close()
            with contextlib.suppress(OSError):
                stats.publish(Path(self.config.node.data_dir), self.index)

    async def _start(self) -> SpoolStore:
        config = self.config
        sockets = bind_listeners(config, self.reuse_port)
        spool: SpoolStore | None = None
        try:
            if self.identity is not None:
                drop_privileges(self.identity)
            if self.link is not None:
                self.link.arm_parent_death_signal()
            _check_writable(config, self.index)
            spool = _open_spool(config, self.index)
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
        except BaseException:
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
        return spool

    def _handle_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop_requested)
        loop.add_signal_handler(signal.SIGHUP, self._reload_requested)
        if self.link is not None:
            loop.add_signal_handler(_SUPERVISOR_GONE_SIGNAL, self._supervisor_gone)
            loop.add_reader(self.link.watch, self._watch_supervisor)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _CONTROL_SIGNALS)  # handled from now on

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

    def _stop_requested(self) -> None:
        if self.link is None and not self.stopping.is_set():
            notify("STOPPING=1")
        self.stopping.set()

    def _reload_requested(self) -> None:
        if self.link is None:
            _notify_reloading()
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
        stopping = asyncio.gather(*(s.stop(grace) for s in self.servers.values()))
        if not self.orphaned:
            await stopping
            return
        try:  # nobody may wait for an orphan: leave even if a session does not
            await asyncio.wait_for(stopping, grace + 0.5)
        except TimeoutError:
            log.warning("worker %d: leaving with sessions still open", self.index)

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
        started = self.started_config  # what runs, not the last file loaded
        for key in ("data_dir", "workers", "user", "group"):
            if getattr(started.node, key) != getattr(config.node, key):
                log.warning("reload: node.%s changes only at restart", key)
        for key in ("path", "fsync", "group_commit_max_batch"):
            if getattr(started.spool, key) != getattr(config.spool, key):
                log.warning("reload: spool.%s changes only at restart", key)
        logging.getLogger().setLevel(getattr(logging, config.node.log_level.upper()))
        self.config = config  # shutdown_grace, hostname, log_level, memory_threshold apply now


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
            settings, config.node.hostname, script, spool, config.spool, worker=worker.index
        )
    except (OSError, ssl.SSLError) as error:
        raise StartupError(
            config.describe_problem(
                ("servers", index, "tls_certificate"),
                f"cannot use {settings.tls_certificate} with tls_key {settings.tls_key}: "
                f"{getattr(error, 'strerror', None) or error}",
            )
        ) from None


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


def run_worker(
    config: Config,
    config_path: str | None,
    index: int,
    reuse_port: bool,
    identity: Identity | None = None,
    link: SupervisorLink | None = None,
) -> int:
    """Run one worker until it is told to stop. Raises StartupError if it cannot start."""
    signal.pthread_sigmask(signal.SIG_BLOCK, _CONTROL_SIGNALS)  # until Worker.run handles them
    worker = Worker(config, config_path, index, reuse_port, identity, link)
    try:
        with asyncio.Runner(loop_factory=_event_loop_factory) as runner:
            runner.run(worker.run())
    finally:
        logs.flush_all()  # a forked worker leaves with os._exit, which skips logging's own
    return 0


def run(config_path: str | None) -> int:
    """``mailwarden run``: load and check everything, then serve until SIGTERM. Exit code 0 on
    a clean stop; raises ConfigError, ScriptError or StartupError (exit 1) when the
    configuration, a script, the spool, the account or a listener address is unusable."""
    config = load_config(config_path)
    _configure_logging(config.node.log_level)
    identity = resolve_identity(config)
    config.check_files()  # a missing script, certificate or key: fail now, naming the key
    workers = config.node.worker_count
    if workers > 1 and identity is None:
        # Fail before forking, with the file and line. Never as root for an unprivileged
        # node.user: operator code runs only in workers, after the drop (they report errors).
        load_scripts(config)
    prepare_directories(config, identity)
    pid_path = pid_file(config)
    pid_path.write_text(f"{os.getpid()}\n")
    for stale in stats.stats_dir(Path(config.node.data_dir)).glob("worker-*.json"):
        stale.unlink(missing_ok=True)  # counters of an earlier run, maybe with more workers
    try:
        if workers == 1:
            return run_worker(config, config_path, 0, False, identity)
        return Supervisor(config, config_path, workers, identity).run()
    finally:
        with contextlib.suppress(OSError):  # after the drop the directory may not be ours
            pid_path.unlink()


# --- the supervisor ---------------------------------------------------------------------------


@dataclass
class _Slot:
    """One worker position: the process filling it now, or when to fork the next one."""

    index: int
    pid: int | None = None
    status: int | None = None  # read end of the worker's status pipe
    pending: bytes = b""
    ready: bool = False
    started_at: float = 0.0
    deaths: int = 0  # quick deaths in a row, for the backoff
    restart_at: float | None = None
    error: str | None = None  # what the worker reported before it exited


class Supervisor:
    """Forks the workers, waits until every one is ready, passes signals on, restarts a worker
    that dies (with backoff), and leaves when they have stopped. Stays as privileged as it
    was started (a replacement worker binds its ports again) and never loads a script."""

    def __init__(
        self, config: Config, config_path: str | None, count: int, identity: Identity | None
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.identity = identity
        self.slots = [_Slot(index) for index in range(count)]
        self.stopping = False
        self.exit_code = 0
        self.startup_failure: str | None = None
        self.started = False  # every worker reported ready once
        self._pid = os.getpid()
        self.reloads = 0
        self.reload_waiting: set[int] = set()
        self.reload_deadline: float | None = None
        self._signals: list[int] = []
        self._selector = selectors.DefaultSelector()
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # Only this process ever holds the write end; workers see EOF when it dies.
        self._watch_read, self._watch_write = os.pipe2(os.O_CLOEXEC)

    def run(self) -> int:
        self._selector.register(self._wake_read, selectors.EVENT_READ)
        previous_wakeup = signal.set_wakeup_fd(self._wake_write, warn_on_full_buffer=False)
        handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in handled}
        try:
            for slot in self.slots:
                self._spawn(slot)
            self._start_up()
            if not self.stopping:
                self.started = True
                log.info("node ready: %d workers", len(self.slots))
                logs.flush_all()
                notify("READY=1", f"MAINPID={os.getpid()}")
            self._serve()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            signal.set_wakeup_fd(previous_wakeup)
            self._selector.close()
            for fd in (self._wake_read, self._wake_write, self._watch_read, self._watch_write):
                os.close(fd)
        return self.exit_code

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._signals.append(signum)  # handled by the loop; the wakeup fd ends its select()

    # --- phases --------------------------------------------------------------------------

    def _start_up(self) -> None:
        """Until every worker is ready. Raises StartupError (after stopping the others) with
        what a worker reported if one dies first."""
        while not self.stopping and not all(slot.ready for slot in self.slots):
            self._step(None)
            if self.startup_failure is not None:
                self._stop_all(STOP_AFTER_FAILED_START)
                raise StartupError(self.startup_failure)

    def _serve(self) -> None:
        while not self.stopping or any(slot.pid is not None for slot in self.slots):
            self._step(self._next_timeout())
            now = time.monotonic()
            for slot in self.slots:
                if slot.restart_at is not None and now >= slot.restart_at:
                    slot.restart_at = None
                    if not self.stopping:
                        self._respawn(slot)
            if self.reload_deadline is not None and now >= self.reload_deadline:
                log.warning("reload: not every worker reported back; ready again anyway")
                self._reload_done()

    def _next_timeout(self) -> float | None:
        moments = [slot.restart_at for slot in self.slots if slot.restart_at is not None]
        if self.reload_deadline is not None:
            moments.append(self.reload_deadline)
        if not moments or self.stopping:
            return None
        return max(0.0, min(moments) - time.monotonic())

    def _stop_all(self, timeout: float) -> None:
        """SIGTERM every worker, wait ``timeout`` seconds for them, then SIGKILL the rest."""
        self.stopping = True
        self._forward(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while any(slot.pid is not None for slot in self.slots):
            left = deadline - time.monotonic()
            if left <= 0:
                self._forward(signal.SIGKILL)
                deadline = time.monotonic() + 5
                left = 5
            self._step(left)

    # --- events --------------------------------------------------------------------------

    def _step(self, timeout: float | None) -> None:
        for key, _ in self._selector.select(timeout):
            if key.fd == self._wake_read:
                with contextlib.suppress(BlockingIOError):
                    while os.read(self._wake_read, 512):
                        pass
            else:
                self._read_status(key.data)
        signals, self._signals = self._signals, []
        for signum in signals:
            self._handle_signal(signum)
        self._reap()
        logs.flush_all()  # the supervisor has no event loop to flush its log lines for it

    def _handle_signal(self, signum: int) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            if not self.stopping:
                notify("STOPPING=1")
                log.info("stopping %d workers", sum(s.pid is not None for s in self.slots))
            self.stopping = True
            self._forward(signum)
        elif signum == signal.SIGHUP:
            self.reloads += 1
            if self.started and not self.stopping:
                _notify_reloading()
                self.reload_waiting = {s.pid for s in self.slots if s.pid is not None}
                self.reload_deadline = time.monotonic() + RELOAD_REPORT_TIMEOUT
            self._forward(signum)

    def _forward(self, signum: int) -> None:
        for slot in self.slots:
            if slot.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, signum)

    def _read_status(self, slot: _Slot) -> None:
        if slot.status is None:
            return
        while True:
            try:
                chunk = os.read(slot.status, 4096)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if not chunk:
                self._selector.unregister(slot.status)
                os.close(slot.status)
                slot.status = None
                return
            slot.pending += chunk
            *lines, slot.pending = slot.pending.split(b"\n")
            for line in lines:
                self._on_status(slot, line.decode(errors="replace"))

    def _on_status(self, slot: _Slot, line: str) -> None:
        kind, _, text = line.partition(" ")
        if kind == "ready":
            slot.ready = True
            slot.error = None
            slot.started_at = time.monotonic()
        elif kind == "error":
            slot.error = text
            if not self.started and self.startup_failure is None:
                self.startup_failure = text
        elif kind == "reloaded" and slot.pid in self.reload_waiting:
            self.reload_waiting.discard(slot.pid)
            if not self.reload_waiting:
                self._reload_done()

    def _reload_done(self) -> None:
        self.reload_waiting.clear()
        self.reload_deadline = None
        notify("READY=1")

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for slot in self.slots:
                if slot.pid == pid:
                    self._exited(slot, os.waitstatus_to_exitcode(status))
                    break

    def _exited(self, slot: _Slot, code: int) -> None:
        self._read_status(slot)  # an "error" line written just before the exit
        if slot.status is not None:
            self._selector.unregister(slot.status)
            os.close(slot.status)
            slot.status = None
        pid, slot.pid = slot.pid, None
        self.reload_waiting.discard(pid)  # type: ignore[arg-type]
        if self.reload_deadline is not None and not self.reload_waiting:
            self._reload_done()
        how = f"was killed by signal {-code}" if code < 0 else f"exited with {code}"
        if self.stopping:
            if code != 0:
                self.exit_code = 1
            return
        was_ready, slot.ready = slot.ready, False
        if not self.started:
            self.startup_failure = (
                self.startup_failure
                or slot.error
                or (f"worker {slot.index} {how} before it was ready")
            )
            return
        now = time.monotonic()
        if was_ready and now - slot.started_at >= STABLE_AFTER:
            slot.deaths = 0
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2**slot.deaths)
        slot.deaths += 1
        reason = f": {slot.error}" if slot.error else ""
        log.error(
            "worker %d (pid %d) %s%s; restarting it in %.1fs", slot.index, pid, how, reason, delay
        )
        slot.restart_at = now + delay

    # --- forking ---------------------------------------------------------------------------

    def _respawn(self, slot: _Slot) -> None:
        try:
            self._spawn(slot)
        except OSError as error:  # EAGAIN, ENOMEM: try again later rather than die
            delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2**slot.deaths)
            slot.deaths += 1
            log.error("cannot fork worker %d: %s; trying again in %.1fs", slot.index, error, delay)
            slot.restart_at = time.monotonic() + delay

    def _spawn(self, slot: _Slot) -> None:
        status_read, status_write = os.pipe2(os.O_CLOEXEC)
        logs.flush_all()  # or the child would write the parent's buffered lines again
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child, which leaves with os._exit
            os.close(status_read)
            self._child(slot.index, status_write)
        os.close(status_write)
        os.set_blocking(status_read, False)
        self._selector.register(status_read, selectors.EVENT_READ, slot)
        slot.pid, slot.status, slot.pending = pid, status_read, b""
        slot.ready, slot.error, slot.started_at = False, None, time.monotonic()

    def _child(self, index: int, status_write: int) -> None:
        """The forked worker: shed the supervisor's state, run, leave with os._exit."""
        code = 1
        link = SupervisorLink(status_write, self._watch_read, self._pid, self.reloads > 0)
        try:
            signal.pthread_sigmask(signal.SIG_BLOCK, _CONTROL_SIGNALS)  # see _CONTROL_SIGNALS
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            self._selector.close()
            for slot in self.slots:
                if slot.status is not None:
                    os.close(slot.status)
            for fd in (self._wake_read, self._wake_write, self._watch_write):
                os.close(fd)
            os.set_blocking(self._watch_read, False)
            if self.config.node.pin_workers:
                _pin_to_cpu(index)
            code = run_worker(self.config, self.config_path, index, True, self.identity, link)
        except StartupError as error:
            log.error("worker %d cannot start: %s", index, error)
            link.report("error", str(error))
        except BaseException as error:
            log.exception("worker %d crashed", index)
            link.report("error", f"worker {index} failed: {type(error).__name__}: {error}")
        finally:
            logs.flush_all()
            os._exit(code)


def _configure_logging(level: str) -> None:
    logs.configure(level)
