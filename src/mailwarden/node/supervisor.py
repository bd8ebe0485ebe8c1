"""The supervisor of a node with several workers: forks them, waits until every one is ready,
passes signals on, restarts a worker that dies (with backoff, see mailwarden.node.backoff) and
leaves when they have stopped."""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from mailwarden import logs
from mailwarden.config import Config
from mailwarden.control import QUEUE_WAKE_SIGNAL
from mailwarden.metrics.node import NodeMetrics
from mailwarden.node.backoff import deaths_before, restart_delay
from mailwarden.node.errors import StartupError
from mailwarden.node.link import CONTROL_SIGNALS, SupervisorLink
from mailwarden.node.notify import notify, notify_reloading
from mailwarden.node.privileges import Identity
from mailwarden.node.worker import run_worker

# One logger for the whole node, so that log lines read as they always have.
log = logging.getLogger("mailwarden.node")

# How long the supervisor waits for the workers to report a reload before telling the service
# manager it is ready again anyway, and for workers to stop after a failed start.
RELOAD_REPORT_TIMEOUT = 30.0
STOP_AFTER_FAILED_START = 5.0


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
        self.metrics: NodeMetrics | None = None

    # The metrics endpoint's Watcher: its sockets share the selector with the workers' pipes.
    def watch(self, fd: int, callback: Callable[[], None]) -> None:
        self._selector.register(fd, selectors.EVENT_READ, callback)

    def unwatch(self, fd: int) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(fd)

    def run(self) -> int:
        self._selector.register(self._wake_read, selectors.EVENT_READ)
        owner = None if self.identity is None else (self.identity.uid, self.identity.gid)
        try:
            self.metrics = NodeMetrics(self.config, self, owner=owner)
        except StartupError:
            self._selector.close()
            for fd in (self._wake_read, self._wake_write, self._watch_read, self._watch_write):
                os.close(fd)
            raise
        previous_wakeup = signal.set_wakeup_fd(self._wake_write, warn_on_full_buffer=False)
        handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, QUEUE_WAKE_SIGNAL)
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
            if self.metrics is not None:
                # The workers have stopped and published their last counts: record them.
                self.metrics.close()
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
            if self.metrics is not None and now >= self.metrics.next_tick:
                self.metrics.tick()

    def _next_timeout(self) -> float | None:
        moments = [slot.restart_at for slot in self.slots if slot.restart_at is not None]
        if self.reload_deadline is not None:
            moments.append(self.reload_deadline)
        if self.metrics is not None:
            moments.append(self.metrics.next_tick)
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
            elif callable(key.data):  # the metrics endpoint's sockets
                key.data()
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
                notify_reloading()
                self.reload_waiting = {s.pid for s in self.slots if s.pid is not None}
                self.reload_deadline = time.monotonic() + RELOAD_REPORT_TIMEOUT
            self._forward(signum)
        elif signum == QUEUE_WAKE_SIGNAL and not self.stopping:
            self._forward(signum)  # each worker delivers its own shard

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
        slot.deaths = deaths_before(slot.deaths, was_ready, now - slot.started_at)
        delay = restart_delay(slot.deaths)
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
            delay = restart_delay(slot.deaths)
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
            signal.pthread_sigmask(signal.SIG_BLOCK, CONTROL_SIGNALS)  # see CONTROL_SIGNALS
            signal.set_wakeup_fd(-1)
            for sig in (*CONTROL_SIGNALS, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            self._selector.close()
            if self.metrics is not None:
                self.metrics.forget()
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


def _pin_to_cpu(index: int) -> None:
    """Keep worker ``index`` on one of the CPUs this node may use (round robin). Where the
    system refuses (no sched_setaffinity), the worker simply runs unpinned."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpus[index % len(cpus)]})
    except (AttributeError, OSError) as error:
        log.warning("worker %d: cannot pin to a CPU: %s", index, error)
