"""Who the node serves as: the account from ``node.user``/``node.group``, the switch to it after
the sockets are bound, and the directories that account must own."""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
from dataclasses import dataclass
from pathlib import Path

from mailwarden.config import Config, ConfigError
from mailwarden.node.errors import StartupError


@dataclass(frozen=True)
class Identity:
    """The account a worker switches to after binding its sockets."""

    user: str
    uid: int
    gid: int


def resolve_identity(config: Config) -> Identity | None:
    """The account to drop to, or None to stay who we are. Raises ConfigError naming
    ``node.user`` or ``node.group`` when the start must be refused."""
    user, group = config.node.user, config.node.group
    if os.geteuid() != 0:
        return _check_unprivileged(config, user, group)
    if user is None:
        raise ConfigError(
            [
                config.describe_problem(
                    ("node", "user"),
                    "refusing to serve clients as root; create an unprivileged account "
                    '(useradd --system mailwarden) and set user = "mailwarden" in [node], '
                    'or set user = "root" to insist',
                )
            ]
        )
    try:
        account = pwd.getpwnam(user)
    except KeyError:
        raise ConfigError(
            [
                config.describe_problem(
                    ("node", "user"),
                    f"no user {user!r} on this machine (create it: useradd --system {user})",
                )
            ]
        ) from None
    gid = account.pw_gid
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise ConfigError(
                [config.describe_problem(("node", "group"), f"no group {group!r} on this machine")]
            ) from None
    if account.pw_uid == 0:
        if group is not None:
            raise ConfigError(
                [
                    config.describe_problem(
                        ("node", "group"), "is only used with an unprivileged node.user"
                    )
                ]
            )
        return None  # root, said explicitly
    return Identity(user, account.pw_uid, gid)


def _check_unprivileged(config: Config, user: str | None, group: str | None) -> None:
    """Not root: the node runs as whoever started it; the keys may only name that account."""
    me = _user_name(os.geteuid())
    if user is not None and user != me:
        raise ConfigError(
            [
                config.describe_problem(
                    ("node", "user"),
                    f"cannot switch to {user!r} without root (running as {me!r}); "
                    f"leave it unset or set it to {me!r}",
                )
            ]
        )
    if group is not None and group != _group_name(os.getegid()):
        raise ConfigError(
            [
                config.describe_problem(
                    ("node", "group"),
                    f"cannot switch to group {group!r} without root (running as group "
                    f"{_group_name(os.getegid())!r}); leave it unset",
                )
            ]
        )
    return None


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def drop_privileges(identity: Identity) -> None:
    """Become ``identity`` for good: supplementary groups, then gid, then uid (the order
    matters: once the uid is dropped the groups can no longer be changed). Raises
    StartupError if the switch fails or root could be regained."""
    try:
        os.initgroups(identity.user, identity.gid)
        os.setgid(identity.gid)
        os.setuid(identity.uid)
    except OSError as error:
        raise StartupError(
            f"node.user: cannot switch to {identity.user} (uid {identity.uid}, "
            f"gid {identity.gid}): {error.strerror or error}"
        ) from None
    expected = ((identity.uid,) * 3, (identity.gid,) * 3)
    if (os.getresuid(), os.getresgid()) != expected:
        raise StartupError(f"node.user: switching to {identity.user} left another uid or gid")
    with contextlib.suppress(PermissionError):
        os.setuid(0)
        raise StartupError(f"node.user: after switching to {identity.user} root could be regained")


def prepare_directories(config: Config, identity: Identity | None) -> None:
    """Create the data and spool directories; those created here belong to ``identity``
    (root creates them, the workers write into them)."""
    for key, directory in (
        (("node", "data_dir"), Path(config.node.data_dir)),
        (("spool", "path"), Path(config.spool.path)),
    ):
        missing = []
        path = directory
        while not path.exists() and path != path.parent:
            missing.append(path)
            path = path.parent
        try:
            for path in reversed(missing):
                path.mkdir(exist_ok=True)
                if identity is not None:
                    os.chown(path, identity.uid, identity.gid)
            if not directory.is_dir():
                raise NotADirectoryError(f"{directory} is not a directory")
        except OSError as error:
            raise StartupError(
                config.describe_problem(
                    key, f"cannot create {directory}: {error.strerror or error}"
                )
            ) from None


def check_writable(config: Config, index: int) -> None:
    """After the drop: the spool must be ours to write, or every message would get a 451."""
    spool = Path(config.spool.path)
    shard = spool / f"shard-{index}.db"
    for path in (spool, shard):
        if path.exists() and not os.access(path, os.W_OK):
            me = _user_name(os.getuid())
            raise StartupError(
                config.describe_problem(
                    ("spool", "path"),
                    f"{path} is not writable by {me} (the node's user); chown -R {me} {spool}",
                )
            )
