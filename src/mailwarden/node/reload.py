"""What a reload (SIGHUP) may take: pure checks of a newly loaded configuration against the one
the worker started with."""

from __future__ import annotations

from mailwarden.auth.passwords import read_password_file
from mailwarden.config import Config
from mailwarden.smtp.server_tls import build_server_tls

# Keys read only at start: a reload warns that they need a restart and keeps running without.
RESTART_ONLY = {
    # log_format too: the supervisor keeps its own, and one log should not mix two formats.
    "node": ("data_dir", "workers", "user", "group", "log_format"),
    "spool": ("path", "fsync", "group_commit_max_batch"),
    "metrics": (
        "listen",
        "series",
        "minute_retention_hours",
        "hour_retention_days",
        "day_retention_days",
    ),
    # The recorder and the daily run are set up once, at start (tlsrpt/recorder.py, daily.py).
    "tlsrpt": (
        "enabled",
        "send",
        "organization_name",
        "contact_info",
        "submitter",
        "sender",
        "flush_interval",
        "max_delay",
        "https_timeout",
        "https_ca_file",
    ),
}


def check_certificates(config: Config) -> None:
    """Load every listener's certificates, keys and client CA file, so that a reload is all or
    nothing: an unusable pair on a later listener cannot leave earlier ones already switched.
    Raises ValueError (TlsSetupError) naming the server, the key and the files."""
    for settings in config.servers:
        build_server_tls(settings)


def check_password_files(config: Config) -> None:
    """Read every listener's ``auth_password_file``, for the same all-or-nothing reload.
    Raises PasswordFileError (a ValueError) naming the file and line."""
    for settings in config.servers:
        if settings.auth_password_file is not None:
            read_password_file(settings.auth_password_file)


def restart_only_changes(started: Config, loaded: Config) -> list[str]:
    """The dotted restart-only keys (``node.workers`` …) whose value in ``loaded`` differs from
    what the worker ``started`` with (not from the last file loaded: what runs is what counts)."""
    changed = []
    for section, keys in RESTART_ONLY.items():
        for key in keys:
            if getattr(getattr(started, section), key) != getattr(getattr(loaded, section), key):
                changed.append(f"{section}.{key}")
    return changed
