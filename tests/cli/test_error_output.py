"""Errors reach the operator verbatim: square brackets in a message ("[node]", a script's own
text) are printed as they are, not taken for terminal markup and dropped."""

from __future__ import annotations

from pathlib import Path

from tests.cli.cli_support import mailwarden
from tests.support.node import free_port, write_config


def test_run_prints_a_script_error_with_square_brackets_verbatim(tmp_path: Path) -> None:
    (tmp_path / "policy.py").write_text('raise KeyError("[bold]missing[/bold] [node]")\n')
    config = write_config(tmp_path, free_port(), server='script = "policy.py"\n')
    result = mailwarden("run", "--config", str(config))
    assert result.returncode == 1, result.stderr
    assert "[bold]missing[/bold] [node]" in result.stderr, result.stderr


def test_config_check_prints_problems_with_square_brackets_verbatim(tmp_path: Path) -> None:
    (tmp_path / "policy.py").write_text('raise ValueError("see [red]the docs[/red]")\n')
    config = write_config(tmp_path, free_port(), server='script = "policy.py"\n')
    result = mailwarden("config", "check", "--config", str(config))
    assert result.returncode == 1, result.stderr
    assert "see [red]the docs[/red]" in result.stderr, result.stderr
