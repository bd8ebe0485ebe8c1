"""The listener's password file: one ``user:argon2-hash`` line per user (``auth_password_file``).

Format (like htpasswd): ``#`` starts a comment line, blank lines are ignored, every other line
is ``USER:HASH`` where USER has no ``:``, no white space and no control character, and HASH is
an argon2 PHC string (``$argon2id$v=19$m=...,t=...,p=...$salt$hash``, as argon2-cffi and
``mailwarden auth hash`` write it). A user name appears at most once.

The file is read again when its size, mtime or inode changes (checked at each AUTH; a stat is
cheap), so ``mailwarden auth set`` takes effect without a reload (and a reload, SIGHUP, reads
it afresh too). A file that became unreadable or
malformed keeps the previous table in use and is logged, naming the file and line.
Verifying a password costs tens of milliseconds of CPU by design: it runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import argon2
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

log = logging.getLogger("mailwarden.auth")

_HASHER = argon2.PasswordHasher()


class PasswordFileError(ValueError):
    """The password file cannot be read or has a malformed line; the text names file and line."""


def valid_username(name: str) -> bool:
    return bool(name) and ":" not in name and all(c.isprintable() and not c.isspace() for c in name)


def parse_password_file(text: str, path: Path | str = "<password file>") -> dict[str, str]:
    """User name to argon2 hash. Raises PasswordFileError naming ``path`` and the line."""
    users: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, colon, stored = line.partition(":")
        where = f"{path}:{number}"
        if not colon or not valid_username(user):
            raise PasswordFileError(f"{where}: expected USER:ARGON2-HASH")
        if user in users:
            raise PasswordFileError(f"{where}: user {user!r} appears twice")
        if not stored.startswith("$argon2"):
            raise PasswordFileError(f"{where}: expected an argon2 hash ($argon2id$...)")
        try:
            argon2.extract_parameters(stored)
        except InvalidHashError:
            raise PasswordFileError(f"{where}: malformed argon2 hash") from None
        users[user] = stored
    return users


def read_password_file(path: Path) -> dict[str, str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise PasswordFileError(f"{path}: cannot be read: {error}") from None
    return parse_password_file(text, path)


def hash_password(password: str) -> str:
    """A new argon2id hash of ``password`` with a fresh random salt (argon2-cffi's defaults)."""
    return _HASHER.hash(password)


_dummy_lock = threading.Lock()
_dummy: list[str] = []


def _dummy_hash() -> str:
    # Verified for unknown users too, so that the answer time does not tell which names exist.
    with _dummy_lock:
        if not _dummy:
            _dummy.append(hash_password(os.urandom(16).hex()))
        return _dummy[0]


def _matches(stored: str, password: str) -> bool:
    try:
        return _HASHER.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


@dataclass(frozen=True, slots=True)
class _Stamp:
    inode: int
    size: int
    mtime_ns: int


class PasswordFile:
    """One listener's password file, re-read when it changes (see the module docstring).

    Raises PasswordFileError at construction when the file cannot be used at all.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._stamp = self._stat()
        self._users = read_password_file(self.path)

    def _stat(self) -> _Stamp | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return _Stamp(st.st_ino, st.st_size, st.st_mtime_ns)

    def users(self) -> dict[str, str]:
        """The current table (read again first if the file changed)."""
        stamp = self._stat()
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self._users = read_password_file(self.path)
                log.info("password file %s reloaded: %d users", self.path, len(self._users))
            except PasswordFileError as error:
                log.error("password file not reloaded, previous one kept: %s", error)
        return self._users

    async def verify(self, username: str, password: str) -> bool:
        """Whether ``username`` is in the file and ``password`` matches its hash."""
        stored = self.users().get(username)
        matched = await asyncio.to_thread(_matches, stored or _dummy_hash(), password)
        return matched and stored is not None


def set_user(path: Path, username: str, stored: str) -> bool:
    """Write ``username:stored`` into the file (replacing that user's line, keeping the rest),
    atomically: a new file renamed over the old one. Returns True when the user was new.

    Raises PasswordFileError for a malformed existing file or user name, OSError if it cannot be
    written. A new file is created readable by its owner only.
    """
    if not valid_username(username):
        raise PasswordFileError(f"{username!r}: a user name has no ':', space or control character")
    path = Path(path)
    lines: list[str] = []
    mode = 0o600
    if path.exists():
        old = path.read_text(encoding="utf-8")
        parse_password_file(old, path)  # refuse to rewrite a file we do not understand
        lines = old.splitlines()
        mode = path.stat().st_mode & 0o777
    entry = f"{username}:{stored}"
    new = True
    for index, line in enumerate(lines):
        if line.strip().partition(":")[0] == username and not line.lstrip().startswith("#"):
            lines[index] = entry
            new = False
    if new:
        lines.append(entry)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write("\n".join(lines) + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return new
