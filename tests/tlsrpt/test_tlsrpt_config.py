"""``[tlsrpt]``: every key documented, the defaults from the node's host name, and errors
that name the key and its line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from mailwarden.config import ConfigError, load_config
from mailwarden.config.tlsrpt import TlsRptSettings
from mailwarden.node.reload import RESTART_ONLY

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_every_key_is_documented_and_restart_only() -> None:
    docs = DOCS.read_text()
    section = docs.split("## `[tlsrpt]`", 1)[1].split("\n## ", 1)[0]
    for key in TlsRptSettings.model_fields:
        assert f"| `{key}` |" in section, f"[tlsrpt] {key} is not documented"
    assert set(RESTART_ONLY["tlsrpt"]) == set(TlsRptSettings.model_fields)


def test_names_default_to_the_node_host_name(tmp_path: Path) -> None:
    path = tmp_path / "mailwarden.toml"
    path.write_text('[node]\nhostname = "mx.example.org"\n[tlsrpt]\norganization_name = "Org"\n')
    config = load_config(path)
    settings, host = config.tlsrpt, config.node.hostname
    assert settings.enabled and settings.send
    assert settings.organization(host) == "Org"
    assert settings.contact(host) == "postmaster@mx.example.org"
    assert settings.submitter_name(host) == "mx.example.org"
    assert settings.from_address(host) == "tlsrpt-noreply@mx.example.org"


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("flush_interval = 0", "tlsrpt.flush_interval"),
        ("max_delay = -1", "tlsrpt.max_delay"),
        ('submitter = "not a host"', "tlsrpt.submitter"),
        ("unknown = 1", "tlsrpt"),
    ],
)
def test_bad_values_name_the_key_and_line(tmp_path: Path, line: str, key: str) -> None:
    path = tmp_path / "mailwarden.toml"
    path.write_text(textwrap.dedent(f"[tlsrpt]\nenabled = true\n{line}\n"))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    text = str(caught.value)
    assert f"mailwarden.toml:3: {key}" in text
