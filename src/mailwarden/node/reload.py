"""What a reload (SIGHUP) may take: pure checks of a newly loaded configuration against the one
the worker started with."""

from __future__ import annotations

from mailwarden.config import Config
from mailwarden.smtp.server import build_ssl_context

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
}


def check_certificates(config: Config) -> None:
    """Load every listener's certificate and key, so that a reload is all or nothing: an
    unusable pair on a later listener cannot leave earlier ones already switched. Raises
    ValueError naming the server and both files."""
    for settings in config.servers:
        if settings.tls_certificate is not None and settings.tls_key is not None:
            try:
                build_ssl_context(settings.tls_certificate, settings.tls_key)
            except OSError as error:  # ssl.SSLError too; say which files
                raise ValueError(
                    f"servers[{settings.id}]: cannot use tls_certificate "
                    f"{settings.tls_certificate} with tls_key {settings.tls_key}: {error}"
                ) from None


def restart_only_changes(started: Config, loaded: Config) -> list[str]:
    """The dotted restart-only keys (``node.workers`` …) whose value in ``loaded`` differs from
    what the worker ``started`` with (not from the last file loaded: what runs is what counts)."""
    changed = []
    for section, keys in RESTART_ONLY.items():
        for key in keys:
            if getattr(getattr(started, section), key) != getattr(getattr(loaded, section), key):
                changed.append(f"{section}.{key}")
    return changed
