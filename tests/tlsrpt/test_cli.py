"""``mailwarden tlsrpt send``'s answers when there is nothing to send or the date is wrong."""

from __future__ import annotations

from pathlib import Path

from tests.support.node import run_cli


def _config(tmp_path: Path) -> str:
    path = tmp_path / "mailwarden.toml"
    path.write_text(f'[node]\ndata_dir = "{tmp_path / "data"}"\nhostname = "mx.example.org"\n')
    return str(path)


def test_a_day_without_sessions_says_so(tmp_path: Path) -> None:
    done = run_cli("tlsrpt", "send", "-c", _config(tmp_path), "--date", "2026-01-31")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "2026-01-31: no outbound TLS sessions recorded\n"
    assert not (tmp_path / "data" / "tlsrpt.sqlite").exists()  # reading creates nothing


def test_a_wrong_date_is_a_usage_error(tmp_path: Path) -> None:
    done = run_cli("tlsrpt", "send", "-c", _config(tmp_path), "--date", "31/01/2026")
    assert done.returncode == 2
    assert "'31/01/2026' is not a date (YYYY-MM-DD)" in done.stderr
