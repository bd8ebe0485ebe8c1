"""How other processes (the CLI) reach a running node: its pid file and the signals it answers.

Kept apart from :mod:`mailwarden.node`, which imports the whole server, so that a CLI command
that only signals the node starts quickly.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from mailwarden.config import Config

RELOAD_SIGNAL = signal.SIGHUP
# Asks the node to look at its queue now: the queue CLI sends it after a change that makes mail
# due (release, retry-now, a bounce queued), as postsuper and postqueue -f trigger Postfix's
# qmgr, so that nothing waits for the next poll ([queue] poll_interval).
QUEUE_WAKE_SIGNAL = signal.SIGUSR2


def pid_file(config: Config) -> Path:
    """Where the running node writes its pid (read by `mailwarden reload`)."""
    return Path(config.node.data_dir) / "mailwarden.pid"


def signal_node(config: Config, signum: int) -> int | None:
    """Send ``signum`` to the running node; its pid, or None when no node runs."""
    try:
        pid = int(pid_file(config).read_text().strip())
        os.kill(pid, signum)
    except (OSError, ValueError):
        return None
    return pid


def wake_queue(config: Config) -> bool:
    """Ask the running node, if any, to look at its queue now; False when no node runs.
    Nothing is lost without it: the queue is polled anyway."""
    return signal_node(config, QUEUE_WAKE_SIGNAL) is not None
