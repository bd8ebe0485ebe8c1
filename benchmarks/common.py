"""Shared pieces of the benchmarks: starting Mailwarden and the peers, reading /proc, smtpping."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT.parent / "shared" / "peers"
DEBIAN_SMTPPING = "/usr/bin/smtpping"  # Halon's meter from Debian, not our own `smtpping`


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on port {port}")


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    pids = [pid]
    for current in pids:
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                children = Path(f"/proc/{current}/task/{task}/children").read_text().split()
                pids.extend(int(child) for child in children)
        except FileNotFoundError:
            continue
    return pids


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time of the given processes (their own, not their children's)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def status_kib(pid: int, key: str) -> int:
    """A ``VmRSS``/``VmHWM`` style field of /proc/PID/status, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


@dataclass
class Mailwarden:
    process: subprocess.Popen[bytes]
    port: int
    directory: Path

    def workers(self) -> list[int]:
        tree = process_tree(self.process.pid)
        return tree[1:] if len(tree) > 1 else tree

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)


def start_mailwarden(
    port: int,
    workers: int | None,
    script: Path | None,
    extra_limits: str = "",
    node_line: str = "",
    server_line: str = "",
) -> Mailwarden:
    """Mailwarden with default durability (fsync, group commit) in a fresh data directory;
    ``workers`` None keeps the default (one per core). ``node_line`` and ``server_line``: one
    more line of ``[node]`` and of the ``[[servers]]`` table (e.g. ``dns_servers = [...]``)."""
    directory = Path(tempfile.mkdtemp(prefix="mailwarden-bench-"))
    script_line = f'script = "{script}"' if script else ""
    config = textwrap.dedent(
        f"""
        [node]
        data_dir = "{directory / "data"}"
        {f"workers = {workers}" if workers is not None else "# workers: the default, one per core"}
        {'user = "root"' if os.geteuid() == 0 else ""}  # as root, said explicitly
        log_level = "info"  # the default: a line per message, as Postfix logs
        {node_line}

        [[servers]]
        id = "bench"
        listen = ["127.0.0.1:{port}"]
        local_domains = ["example.org"]
        {script_line}
        {server_line}

        [servers.limits]
        connections_per_ip = 20000
        connections = 20000
        {extra_limits}
        """
    )
    (directory / "mailwarden.toml").write_text(config)
    log = open(directory / "mailwarden.log", "wb")  # noqa: SIM115 - lives as long as the node
    process = subprocess.Popen(
        [sys.executable, "-m", "mailwarden.cli.main", "run", "--config", "mailwarden.toml"],
        cwd=directory,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    wait_for_port(port)
    return Mailwarden(process, port, directory)


def start_postfix(port: int) -> None:
    subprocess.run(["bash", str(PEERS / "postfix-queue-only.sh"), str(port)], check=True)
    empty_postfix_queue()


def empty_postfix_queue() -> None:
    """Delete what earlier rounds queued: Postfix keeps retrying it (its relayhost is a dead
    port), and that background work would slow whichever server is measured next."""
    subprocess.run(["postsuper", "-d", "ALL"], capture_output=True)


def stop_postfix() -> None:
    empty_postfix_queue()
    subprocess.run(["postfix", "stop"], capture_output=True)


def start_haraka(port: int) -> int:
    out = subprocess.run(
        ["bash", str(PEERS / "haraka-discard.sh"), str(port)],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(out.stdout.strip().splitlines()[0])


def stop_haraka(pid: int) -> None:
    for child in reversed(process_tree(pid)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGTERM)


def smtpping_rate(
    port: int, seconds: float, parallel: int, size_kib: int, extra: Sequence[str] = ()
) -> list[int]:
    """Run Debian's smtpping in rate mode for ``seconds``; the messages completed per second.
    ``extra``: more of its options (e.g. ``-f FILE -S SENDER -H HELO``).

    smtpping prints its per-second counts only to a terminal, so it runs under script(1).
    The first and last seconds are partial and dropped.
    """
    command = (
        f"{DEBIAN_SMTPPING} -r -w 0 -P {parallel} -s {size_kib} {shlex.join(extra)} "
        f"test@example.org @127.0.0.1 -p {port}"
    )
    result = subprocess.run(
        ["timeout", "-s", "INT", str(seconds), "script", "-qc", command, "/dev/null"],
        capture_output=True,
        text=True,
    )
    counts = [int(x) for x in re.findall(r"^(\d+)\r?$", result.stdout, re.MULTILINE)]
    return counts[1:-1] if len(counts) > 2 else counts


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0
