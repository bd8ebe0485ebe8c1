"""Real scanner daemons for the scanner tests: Debian's clamd, spamd and rspamd, each started on
a free loopback port with a configuration of its own in a temporary directory (never the system
services, never the distributions' signature or rule downloads), stopped afterwards. Also a
"silent" server that accepts connections and never answers, for the timeout tests.

The signatures and rules are written here, small enough that each daemon starts in about a
second: clamd gets one .ndb signature for the EICAR test file, spamd and rspamd detect GTUBE."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.node import free_port

# The EICAR anti-virus test file (eicar.org): harmless, and detected by every scanner.
EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
# The Generic Test for Unsolicited Bulk Email: SpamAssassin's and rspamd's test pattern.
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

CLAMD_SIGNATURE = "Mailwarden.Test.EICAR"
# clamd reads StreamMaxLength with a unit; the tests send more than this to see it refused.
CLAMD_STREAM_MAX = 1024 * 1024


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _wait_until(
    ready: Callable[[], bool], process: subprocess.Popen[bytes], what: str, log: Path
) -> None:
    deadline = time.monotonic() + 30
    while not ready():
        if process.poll() is not None:
            text = log.read_text(errors="replace") if log.exists() else ""
            raise RuntimeError(f"{what} exited with {process.returncode}: {text[-3000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after 30s: {log.read_text(errors='replace')}")
        time.sleep(0.05)


@dataclass
class ClamdServer:
    port: int
    socket_path: Path
    directory: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def _clamd_pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"zPING\0")
            return sock.recv(16) == b"PONG\0"
    except OSError:
        return False


@contextmanager
def clamd_server(directory: Path) -> Iterator[ClamdServer]:
    """clamd in the foreground on 127.0.0.1:PORT and a unix socket in ``directory``, with a
    database of one signature (the EICAR test string, as a ClamAV body signature, .ndb)."""
    database = directory / "db"
    database.mkdir()
    (database / "mailwarden-test.ndb").write_text(f"{CLAMD_SIGNATURE}:0:*:{EICAR.hex()}\n")
    port = free_port()
    socket_path = directory / "clamd.sock"
    log = directory / "clamd.log"
    config = directory / "clamd.conf"
    config.write_text(
        f"Foreground yes\n"
        f"DatabaseDirectory {database}\n"
        f"TemporaryDirectory {directory}\n"
        f"TCPSocket {port}\nTCPAddr 127.0.0.1\n"
        f"LocalSocket {socket_path}\n"
        f"StreamMaxLength {CLAMD_STREAM_MAX // 1024}K\n"
        f"LogFile {log}\nPidFile {directory / 'clamd.pid'}\n"
        # One scan at a time is all the tests need; fewer threads, faster start.
        "MaxThreads 2\nSelfCheck 0\n"
    )
    with open(directory / "clamd.out", "wb") as output:
        process = subprocess.Popen(
            ["clamd", "--config-file", str(config)], stdout=output, stderr=subprocess.STDOUT
        )
    try:
        _wait_until(lambda: _clamd_pong(port), process, "clamd", log)
        yield ClamdServer(port, socket_path, directory)
    finally:
        _stop(process)


@contextmanager
def silent_server() -> Iterator[str]:
    """``127.0.0.1:PORT`` of a socket that listens (the kernel completes the handshake) but is
    never read: a daemon that hangs."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"127.0.0.1:{listener.getsockname()[1]}"


def closed_port() -> str:
    """``127.0.0.1:PORT`` where nothing listens: a daemon that is down."""
    return f"127.0.0.1:{free_port()}"
