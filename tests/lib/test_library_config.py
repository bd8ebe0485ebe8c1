"""``[library]``: every key documented in docs/configuration.md, the defaults, and errors that
name the file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailwarden.config import ConfigError, load_config
from mailwarden.config.library import LibrarySettings

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_docs_describe_every_library_key() -> None:
    docs = DOCS.read_text(encoding="utf-8")
    assert "## `[library]`" in docs
    section = docs.split("## `[library]`", 1)[1].split("\n## ", 1)[0]
    for key in LibrarySettings.model_fields:
        assert f"| `{key}` |" in section, f"library.{key} is not documented"


def test_defaults_keep_everything_on_the_node(tmp_path: Path) -> None:
    library = load_config(None).library
    assert (library.rate_backend, library.datastore) == ("local", "sqlite")
    assert library.redis_url is None and library.postgresql_url is None


def test_scanners_default_to_debians_sockets_and_load(tmp_path: Path) -> None:
    library = load_config(None).library
    assert library.clamd_address == "/var/run/clamav/clamd.ctl"
    assert library.spamd_address == "127.0.0.1:783"
    assert library.rspamd_url == "http://127.0.0.1:11333"
    assert library.scanner_timeout == 30.0
    path = tmp_path / "mailwarden.toml"
    path.write_text(
        "[library]\n"
        'clamd_address = "[::1]:3310"\n'
        'spamd_address = "/run/spamd.sock"\n'
        'rspamd_url = "https://rspamd.internal:11333"\n'
        "scanner_timeout = 5.5\n"
    )
    library = load_config(path).library
    assert (library.clamd_address, library.spamd_address) == ("[::1]:3310", "/run/spamd.sock")
    assert library.scanner_timeout == 5.5


def test_redis_and_postgresql_backends_load(tmp_path: Path) -> None:
    path = tmp_path / "mailwarden.toml"
    path.write_text(
        "[library]\n"
        'rate_backend = "redis"\n'
        'datastore = "postgresql"\n'
        'redis_url = "redis://127.0.0.1:6379/1"\n'
        'postgresql_url = "postgresql://mailwarden@db.example:5432/mailwarden"\n'
    )
    library = load_config(path).library
    assert library.rate_backend == "redis" and library.datastore == "postgresql"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('rate_backend = "redis"\n', ":2: library.rate_backend: expected redis_url as well"),
        ('datastore = "postgresql"\n', ":2: library.datastore: expected postgresql_url"),
        ('redis_url = "http://x"\n', ":2: library.redis_url: expected a URL such as"),
        ('datastore = "mysql"\n', ":2: library.datastore: expected"),
        ("rate_slots = 10\n", ":2: library.rate_slots: expected"),
        ("rate_limit = 1\n", ":2: library.rate_limit: unknown key"),
        ('clamd_address = "localhost"\n', ":2: library.clamd_address: expected host:port or"),
        ('spamd_address = "127.0.0.1:99999"\n', ":2: library.spamd_address: expected host:port"),
        ('rspamd_url = "ftp://x"\n', ":2: library.rspamd_url: expected a URL such as"),
        ("scanner_timeout = 0\n", ":2: library.scanner_timeout: expected"),
        ("dns_cache_size = -1\n", ":2: library.dns_cache_size: expected"),
    ],
)
def test_errors_name_the_line_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "mailwarden.toml"
    path.write_text("[library]\n" + text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert expected in str(caught.value), str(caught.value)


def test_dns_cache_size_reaches_the_workers_cache(tmp_path: Path) -> None:
    """What a worker does at start and on reload (_configure_library): the [library] size
    becomes the DNS cache's; 0 turns it off."""
    import importlib

    from mailwarden.lib import dns_cache
    from mailwarden.node.worker import _configure_library

    # The rest of the library state _configure_library sets, put back afterwards.
    rate_module = importlib.import_module("mailwarden.lib.rate")
    store_module = importlib.import_module("mailwarden.lib.datastore")
    scanners = importlib.import_module("mailwarden.lib.scanners")
    saved = (rate_module._limiter, store_module.datastore.backend, scanners._settings)

    path = tmp_path / "mailwarden.toml"
    path.write_text(f'[node]\ndata_dir = "{tmp_path}"\n[library]\ndns_cache_size = 0\n')
    assert load_config(None).library.dns_cache_size == dns_cache.DEFAULT_SIZE
    try:
        _configure_library(load_config(path))
        assert dns_cache.size() == 0
        path.write_text(f'[node]\ndata_dir = "{tmp_path}"\n[library]\ndns_cache_size = 50\n')
        _configure_library(load_config(path))
        assert dns_cache.size() == 50
    finally:
        dns_cache.configure(dns_cache.DEFAULT_SIZE)
        rate_module._limiter, store_module.datastore.backend, scanners._settings = saved
