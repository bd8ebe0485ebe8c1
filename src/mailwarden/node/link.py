"""The link between a worker and its supervisor: the status pipe, the pipe whose EOF means the
supervisor is gone, the parent-death signal, and the signals both sides hold back."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
from dataclasses import dataclass

from mailwarden.control import QUEUE_WAKE_SIGNAL
from mailwarden.node.errors import StartupError

# Held back (blocked) while a worker starts, until its event loop handles them: a SIGTERM that
# arrived while the spool was opening used to kill the worker with the default action, and the
# node then exited 1 instead of stopping cleanly. Blocked signals stay pending, not lost.
# QUEUE_WAKE_SIGNAL's default action would end the process: held back with the others.
CONTROL_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, QUEUE_WAKE_SIGNAL}

# The parent-death signal of a worker (prctl PR_SET_PDEATHSIG). Not SIGKILL: the worker must
# still stop listening and let commits in progress finish, exactly as on EOF of the pipe.
SUPERVISOR_GONE_SIGNAL = signal.SIGUSR1
_PR_SET_PDEATHSIG = 1


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
            libc.prctl(_PR_SET_PDEATHSIG, int(SUPERVISOR_GONE_SIGNAL), 0, 0, 0)
        if os.getppid() != self.supervisor:
            raise StartupError("the supervisor exited while this worker started")
