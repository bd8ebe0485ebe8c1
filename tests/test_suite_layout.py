"""Every folder of the suite, and any mix of folders, collects on its own (DESIGN.md).

Shared helpers live in importable modules (tests/support/), never imported from a ``conftest``:
pytest registers one module per conftest, so ``from conftest import ...`` finds whichever
folder's conftest came first and breaks as soon as another folder is collected with it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = sorted({path.parent.name for path in (ROOT / "tests").glob("*/test_*.py")})


def collect(*targets: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
            *targets,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "targets",
    [
        *[(f"tests/{name}",) for name in FOLDERS],
        ("tests/tools", "tests/server"),
        ("tests/smtp", "tests/tools"),
        ("tests/server", "tests/durability", "tests/tools"),
    ],
    ids=" ".join,
)
def test_subset_collects_alone(targets: tuple[str, ...]) -> None:
    done = collect(*targets)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert " collected" in done.stdout and "error" not in done.stdout.splitlines()[-1]


def test_no_test_imports_a_conftest() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "tests").rglob("*.py")
        if any(
            line.startswith(("from conftest import", "import conftest"))
            for line in path.read_text().splitlines()
        )
    ]
    assert offenders == []
