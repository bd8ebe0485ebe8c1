"""Postfix's smtp-sink as a real receiving peer, on a free loopback port.

    with smtp_sink(tmp_path, "-L") as sink:      # flags as smtp-sink(1) takes them
        sink.port, sink.dumps                     # one dump file per transaction in ``dumps``
        sink.messages()                           # the dumped transactions, oldest first

``-d`` dumps each transaction (envelope and message, LF line ends) into its own file; flags such
as ``-r``/``-q`` (hard/soft reject a command), ``-B``/``-b`` (the reject replies), ``-L`` (LMTP)
or ``-p`` (no PIPELINING) make it the peer a test needs.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.node import free_port, wait_for_port

SMTP_SINK = "/usr/sbin/smtp-sink"


@dataclass
class Sink:
    port: int
    dumps: Path
    process: subprocess.Popen[bytes]

    def messages(self) -> list[bytes]:
        """Every transaction dumped so far, oldest first."""
        paths = sorted(self.dumps.iterdir(), key=lambda path: path.stat().st_mtime_ns)
        return [path.read_bytes() for path in paths]


@contextmanager
def smtp_sink(
    tmp_path: Path,
    *flags: str,
    name: str = "dumps",
    backlog: int = 64,
    host: str = "127.0.0.1",
    port: int | None = None,
) -> Iterator[Sink]:
    """Start smtp-sink with ``flags`` on ``host`` (another loopback address, 127.0.0.2, lets
    two peers share one port: MX hosts are all reached on ``[delivery] port``); stops it on
    exit."""
    port = port or free_port()
    dumps = tmp_path / name
    dumps.mkdir()
    user = ["-u", "root"] if os.geteuid() == 0 else []
    # %H%M%S then a unique suffix smtp-sink adds: one file per transaction.
    command = [
        SMTP_SINK,
        *user,
        *flags,
        "-d",
        f"{dumps}/%H%M%S.",
        f"{host}:{port}",
        str(backlog),
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_port(port, process=process, host=host)
        yield Sink(port, dumps, process)
    finally:
        process.terminate()
        process.wait(timeout=10)
