"""``mailwarden run``: load and check everything, then run one worker here or a supervisor."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from mailwarden import logs, stats
from mailwarden.config import load_config
from mailwarden.control import pid_file
from mailwarden.node.privileges import prepare_directories, resolve_identity
from mailwarden.node.scripts import load_scripts
from mailwarden.node.supervisor import Supervisor
from mailwarden.node.worker import run_worker


def run(config_path: str | None) -> int:
    """``mailwarden run``: load and check everything, then serve until SIGTERM. Exit code 0 on
    a clean stop; raises ConfigError, ScriptError or StartupError (exit 1) when the
    configuration, a script, the spool, the account or a listener address is unusable."""
    config = load_config(config_path)
    _configure_logging(config.node.log_level, config.node.log_format)
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


def _configure_logging(level: str, line_format: str) -> None:
    logs.configure(level, line_format)
