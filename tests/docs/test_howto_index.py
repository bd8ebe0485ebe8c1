"""docs/howto/README.md lists every how-to, the top README links the index, and every relative
link of the how-tos leads to a file that exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HOWTO = ROOT / "docs" / "howto"
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def pages() -> list[Path]:
    return sorted(path for path in HOWTO.glob("*.md") if path.name != "README.md")


def test_the_index_lists_every_howto_and_the_readme_links_it() -> None:
    index = (HOWTO / "README.md").read_text()
    listed = set(LINK.findall(index))
    assert pages(), "no how-tos"
    missing = [page.name for page in pages() if page.name not in listed]
    assert not missing, f"docs/howto/README.md does not list {missing}"
    assert "(docs/howto/README.md)" in (ROOT / "README.md").read_text()


def test_relative_links_of_the_howtos_exist() -> None:
    broken = [
        f"{page.name}: {target}"
        for page in [*pages(), HOWTO / "README.md"]
        for target in LINK.findall(page.read_text())
        if "://" not in target and not (page.parent / target).exists()
    ]
    assert not broken, broken
