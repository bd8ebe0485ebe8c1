"""Every public name of ``mailwarden.lib`` is documented in docs/library.md."""

from __future__ import annotations

from pathlib import Path

import mailwarden.lib

DOCS = Path(__file__).resolve().parents[2] / "docs" / "library.md"


def test_every_exported_name_is_documented() -> None:
    text = DOCS.read_text()
    missing = [name for name in mailwarden.lib.__all__ if f"`{name}" not in text]
    assert missing == []
    for name in mailwarden.lib.__all__:
        assert getattr(mailwarden.lib, name) is not None
