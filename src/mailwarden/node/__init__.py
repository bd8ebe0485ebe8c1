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

Modules: ``start`` (``run()``), ``supervisor`` (forking, readiness, signals, restarts) and
``backoff`` (its restart delays), ``worker`` (the event loop, stop, reload) and ``reload``
(what a reload may take), ``link`` (the pipes and signals between the two),
``privileges`` (the account, the drop, the directories), ``listeners`` (binding sockets),
``notify`` (sd_notify), ``scripts`` (loading the policy scripts), ``errors``.
"""

from __future__ import annotations

from mailwarden.control import pid_file
from mailwarden.node.backoff import BACKOFF_FIRST, BACKOFF_MAX, STABLE_AFTER
from mailwarden.node.errors import StartupError
from mailwarden.node.link import SupervisorLink
from mailwarden.node.listeners import bind_listeners
from mailwarden.node.notify import notify
from mailwarden.node.privileges import (
    Identity,
    drop_privileges,
    prepare_directories,
    resolve_identity,
)
from mailwarden.node.scripts import load_scripts
from mailwarden.node.start import run
from mailwarden.node.supervisor import Supervisor
from mailwarden.node.worker import ORPHAN_GRACE, Worker, run_worker

__all__ = [
    "BACKOFF_FIRST",
    "BACKOFF_MAX",
    "ORPHAN_GRACE",
    "STABLE_AFTER",
    "Identity",
    "StartupError",
    "Supervisor",
    "SupervisorLink",
    "Worker",
    "bind_listeners",
    "drop_privileges",
    "load_scripts",
    "notify",
    "pid_file",
    "prepare_directories",
    "resolve_identity",
    "run",
    "run_worker",
]
