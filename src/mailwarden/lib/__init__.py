"""The script library: what ``from mailwarden.lib import …`` gives a policy script.

Each capability is a module of its own (``mailwarden.lib.NAME``), documented with an example in
docs/library.md and tested against the real service it talks to. This package re-exports the
names scripts use; it grows one import line per module.
"""

from __future__ import annotations

from mailwarden.lib import (
    arc,
    authres,
    clamav,
    dkim,
    dlp,
    dmarc,
    dns,
    http,
    lists,
    rspamd,
    spamassassin,
    spf,
    tls,
)
from mailwarden.lib.backends import BackendError
from mailwarden.lib.cache import cache
from mailwarden.lib.datastore import datastore
from mailwarden.lib.lists import load_list
from mailwarden.lib.rate import rate, rate_reset
from mailwarden.lib.scanners import ScannerError
from mailwarden.lib.stat import stat
from mailwarden.lib.tls import TlsError

__all__: list[str] = [
    "BackendError",
    "ScannerError",
    "TlsError",
    "arc",
    "authres",
    "cache",
    "clamav",
    "datastore",
    "dkim",
    "dlp",
    "dmarc",
    "dns",
    "http",
    "lists",
    "load_list",
    "rate",
    "rate_reset",
    "rspamd",
    "spamassassin",
    "spf",
    "stat",
    "tls",
]
