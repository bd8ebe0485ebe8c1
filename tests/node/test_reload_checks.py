"""What a reload may take (mailwarden.node.reload), checked on real configuration files."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from mailwarden.config import load_config
from mailwarden.node.reload import check_certificates, restart_only_changes

BASE = """
[node]
data_dir = "data"
workers = 1
log_level = "info"
shutdown_grace = 30.0

[spool]
path = "data/spool"
fsync = true
"""


def config_file(tmp_path: Path, text: str, name: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_restart_only_keys_are_named_and_reloadable_keys_are_not(tmp_path: Path) -> None:
    started = load_config(config_file(tmp_path, BASE, "started.toml"))
    changed = BASE.replace("workers = 1", "workers = 2").replace("fsync = true", "fsync = false")
    changed = changed.replace('"info"', '"debug"').replace("30.0", "5.0")
    loaded = load_config(config_file(tmp_path, changed, "loaded.toml"))
    assert restart_only_changes(started, loaded) == ["node.workers", "spool.fsync"]


def test_log_format_changes_only_at_restart(tmp_path: Path) -> None:
    # The supervisor keeps the format it started with: one log must not mix two.
    started = load_config(config_file(tmp_path, BASE, "started.toml"))
    changed = BASE.replace('log_level = "info"', 'log_level = "info"\nlog_format = "json"')
    loaded = load_config(config_file(tmp_path, changed, "loaded.toml"))
    assert restart_only_changes(started, loaded) == ["node.log_format"]


def test_nothing_to_restart_for_the_same_file(tmp_path: Path) -> None:
    path = config_file(tmp_path, BASE, "same.toml")
    assert restart_only_changes(load_config(path), load_config(path)) == []


def test_an_unusable_certificate_names_the_server_and_both_files(tmp_path: Path) -> None:
    certificate = tmp_path / "cert.pem"
    key = tmp_path / "key.pem"
    certificate.write_text("not a certificate\n")
    key.write_text("not a key\n")
    text = BASE + textwrap.dedent(
        f"""
        [[servers]]
        id = "mx"
        listen = ["127.0.0.1:2525"]
        tls_certificate = "{certificate}"
        tls_key = "{key}"
        """
    )
    config = load_config(config_file(tmp_path, text, "tls.toml"))
    with pytest.raises(ValueError) as raised:
        check_certificates(config)
    message = str(raised.value)
    assert "servers[mx]" in message and str(certificate) in message and str(key) in message
