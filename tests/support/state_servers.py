"""Real Redis and PostgreSQL servers for the script library's tests: Debian's redis-server and
PostgreSQL binaries, each started on a free loopback port in a temporary directory of its own
(never the system services), stopped and removed afterwards."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.node import free_port


def _wait_for(port: int, process: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}: {log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{what} not listening on {port}: {log.read_text()}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@dataclass
class RedisServer:
    port: int
    directory: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@contextmanager
def redis_server(directory: Path) -> Iterator[RedisServer]:
    """redis-server on 127.0.0.1 and a free port, no persistence, data in ``directory``."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = free_port()
    log = directory / "redis.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [
                *(binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory)),
                *("--save", "", "--appendonly", "no", "--daemonize", "no"),
                *("--protected-mode", "no"),
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_for(port, process, "redis-server", log)
        yield RedisServer(port, directory)
    finally:
        _stop(process)


@dataclass
class PostgresServer:
    port: int
    directory: Path

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"


def _postgres_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else (shutil.which(name) or name)


def _as_postgres_user() -> tuple[Callable[[], None] | None, int | None, int | None]:
    """initdb and postgres refuse to run as root: as root, run them as Debian's ``postgres``
    account (created by the postgresql package); otherwise as whoever runs the tests."""
    if os.geteuid() != 0:
        return None, None, None
    account = pwd.getpwnam("postgres")

    def switch() -> None:
        os.setgid(account.pw_gid)
        os.setgroups([])
        os.setuid(account.pw_uid)

    return switch, account.pw_uid, account.pw_gid


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """A throw-away PostgreSQL cluster (trust authentication, superuser ``postgres``) on
    127.0.0.1 and a free port, its data and socket in a new temporary directory."""
    switch, uid, gid = _as_postgres_user()
    # Under /tmp itself: pytest's tmp_path sits below a root-only directory the postgres
    # account cannot enter.
    directory = Path(tempfile.mkdtemp(prefix="mailwarden-pg-"))
    data = directory / "data"
    log = directory / "postgres.log"
    if uid is not None and gid is not None:
        os.chown(directory, uid, gid)
    try:
        subprocess.run(
            [
                *(_postgres_bin("initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"),
                *("--no-sync", "-E", "UTF8", "--locale", "C"),
            ],
            preexec_fn=switch,
            check=True,
            capture_output=True,
            timeout=120,
        )
        port = free_port()
        with open(log, "wb") as output:
            process = subprocess.Popen(
                [
                    *(_postgres_bin("postgres"), "-D", str(data), "-p", str(port)),
                    *("-c", "listen_addresses=127.0.0.1"),
                    *("-c", f"unix_socket_directories={directory}"),
                    *("-c", "fsync=off", "-c", "synchronous_commit=off"),
                ],
                preexec_fn=switch,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        try:
            _wait_for(port, process, "postgres", log)
            _wait_accepting(port, process, log)
            yield PostgresServer(port, directory)
        finally:
            _stop(process)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _wait_accepting(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    """The port opens before the server accepts sessions (recovery at start-up)."""
    import psycopg

    deadline = time.monotonic() + 30
    while True:
        try:
            psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres").close()
            return
        except psycopg.OperationalError:
            if process.poll() is not None or time.monotonic() > deadline:
                log_text = log.read_text()
                raise RuntimeError(f"postgres does not accept sessions: {log_text}") from None
            time.sleep(0.1)
