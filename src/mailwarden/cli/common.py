"""What every ``mailwarden`` command shares: the ``--config`` option, the error console, loading
the configuration with its errors on the operator's terminal, and making text safe to print."""

from __future__ import annotations

import re
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from mailwarden.config import Config, ConfigError, load_config

ConfigOption = Annotated[
    str | None,
    typer.Option(
        "--config",
        "-c",
        envvar="MAILWARDEN_CONFIG",
        help="Configuration file (TOML). Default: the embedded defaults.",
    ),
]

# soft_wrap: never hard-wrap messages at the console width (80 columns when stderr is not a
# terminal), which split "file:line: key: problem" across lines and broke grep and CI logs.
err = Console(stderr=True, soft_wrap=True)


def load(config_path: str | None) -> Config:
    """The configuration; on an error, print it (file, line, key) and exit 1."""
    try:
        return load_config(config_path)
    except ConfigError as error:
        err.print(f"[red]configuration error[/red]\n{escape(str(error))}", highlight=False)
        raise typer.Exit(1) from None


def fail(message: str) -> typer.Exit:
    """Print ``message`` as it is (no markup) on stderr; the Exit(1) to raise."""
    err.print(message, highlight=False, markup=False)
    return typer.Exit(1)


_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
_CONTROL_BUT_NEWLINE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(value: str, *, keep_newlines: bool = False) -> str:
    """``value`` with every control character but tab (and newline if asked) as an escape."""
    pattern = _CONTROL_BUT_NEWLINE if keep_newlines else _CONTROL
    return pattern.sub(lambda match: repr(match.group())[1:-1], value)
