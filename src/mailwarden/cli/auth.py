"""``mailwarden auth hash|set``: make argon2 hashes for a listener's ``auth_password_file``.

The password is read from standard input (one line) or asked for without echo, never taken
from the command line, where every user of the machine could read it (``ps``, shell history).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from mailwarden.auth.passwords import PasswordFileError, hash_password, set_user

auth_app = typer.Typer(help="Password hashes for auth_password_file.", no_args_is_help=True)
err = Console(stderr=True, soft_wrap=True)


def _read_password() -> str:
    if sys.stdin.isatty():
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        err.print("expected a password (standard input was empty)", highlight=False)
        raise typer.Exit(1)
    return str(password)


@auth_app.command("hash")
def hash_command() -> None:
    """Print an argon2id hash of the password read from standard input."""
    print(hash_password(_read_password()))


@auth_app.command("set")
def set_command(
    file: Annotated[Path, typer.Argument(help="The password file (created if missing).")],
    user: Annotated[str, typer.Argument(help="The user name (no ':' or space).")],
) -> None:
    """Add USER to FILE, or change its password: the file is replaced atomically and
    running nodes see the change at the next AUTH."""
    password = _read_password()
    try:
        new = set_user(file, user, hash_password(password))
    except (PasswordFileError, OSError) as error:
        err.print(escape(str(error)), highlight=False)
        raise typer.Exit(1) from None
    err.print(escape(f"{'added' if new else 'changed'} {user} in {file}"), highlight=False)
