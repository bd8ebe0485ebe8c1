"""A real Mailwarden node in a subprocess, configured from a TOML string, on free ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    port: int,
    timeout: float = 15.0,
    process: subprocess.Popen | None = None,
    host: str = "127.0.0.1",
) -> None:
    """Wait until something accepts on host:port; fail early if ``process`` exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"mailwarden exited with {process.returncode} before listening")
        try:
            with socket.create_connection((host, port), timeout=0.5) as sock:
                sock.recv(1024)  # consume the greeting so the server sees a clean close
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout}s")


@dataclass
class Node:
    """A running node. ``log()`` returns what it wrote to stderr so far."""

    directory: Path
    config_path: Path
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    extra_ports: dict[str, int] = field(default_factory=dict)

    @property
    def spool(self) -> Path:
        return self.directory / "data" / "spool"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        """kill -9 the whole process group (supervisor and workers)."""
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def mailwarden(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run a CLI command against this node's configuration."""
        return run_cli(*args, "--config", str(self.config_path))


def run_cli(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailwarden.cli.main", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def node_user_line() -> str:
    """The ``[node]`` line a test config needs to run as whoever runs the tests: as root the
    node refuses to serve unless ``user = "root"`` is said explicitly (CI runs as root)."""
    return 'user = "root"' if os.geteuid() == 0 else ""


def write_config(directory: Path, port: int, body: str = "", server: str = "") -> Path:
    """A config with one server ``inbound`` on ``port``; ``server`` adds keys to that server,
    ``body`` appends more tables (e.g. ``[servers.limits]``) after it."""
    text = textwrap.dedent(
        f"""
        [node]
        data_dir = "data"
        workers = 1
        shutdown_grace = 5
        hostname = "mx.test.example"
        {node_user_line()}

        # The receiving tests read back what they queued; delivery has its own tests
        # (tests/queue, tests/delivery), which deliver to real peers.
        [queue]
        deliver = false

        [[servers]]
        id = "inbound"
        listen = ["127.0.0.1:{port}"]
        local_domains = ["example.org"]
        """
    )
    text += textwrap.dedent(server) + "\n" + textwrap.dedent(body)
    path = directory / "mailwarden.toml"
    path.write_text(text)
    return path


def _ready_lines(log_path: Path) -> int:
    try:
        return log_path.read_text(errors="replace").count("node ready: ")
    except FileNotFoundError:
        return 0


def wait_for_ready(node: Node, count: int = 1, timeout: float = 15.0) -> None:
    """Wait for the node's "node ready" log line (written once every worker listens)."""
    deadline = time.monotonic() + timeout
    while _ready_lines(node.log_path) < count:
        if node.process.poll() is not None:
            raise RuntimeError(f"mailwarden exited with {node.process.returncode}: {node.log()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no 'node ready' line after {timeout}s: {node.log()}")
        time.sleep(0.02)


@contextmanager
def node_process(
    directory: Path,
    config_path: Path,
    port: int,
    *,
    wait: bool = True,
    preexec_fn: Callable[[], object] | None = None,
    log_mode: str = "wb",
) -> Iterator[Node]:
    """Run ``mailwarden run --config config_path`` in its own process group (so kill() reaches
    every worker), logging to ``directory/mailwarden.log``; SIGTERM it afterwards, then kill -9
    if it does not stop within 15 s."""
    log_path = directory / "mailwarden.log"
    earlier_starts = _ready_lines(log_path) if "a" in log_mode else 0
    with open(log_path, log_mode) as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "mailwarden.cli.main", "run", "--config", str(config_path)],
            cwd=directory,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=preexec_fn,
        )
    node = Node(directory, config_path, port, process, log_path)
    try:
        if wait:
            wait_for_port(port, process=process)
            # Every worker listens (the first one may accept before the others are up).
            wait_for_ready(node, earlier_starts + 1)
        yield node
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                node.kill()


@contextmanager
def running_node(
    directory: Path,
    *,
    server: str = "",
    body: str = "",
    port: int | None = None,
    wait: bool = True,
) -> Iterator[Node]:
    """Start ``mailwarden run`` with a generated config in ``directory``; stop it afterwards."""
    port = port or free_port()
    config_path = write_config(directory, port, body=body, server=server)
    with node_process(directory, config_path, port, wait=wait) as node:
        yield node


def worker_pids(supervisor: int) -> list[int]:
    """The worker processes a supervisor forked (its children, from /proc)."""
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    return [int(pid) for pid in children]


def process_gone(pid: int) -> bool:
    """True once ``pid`` has exited: no /proc entry, or a zombie nobody reaped yet (an orphan's
    new parent may be slow to reap, or never reap, inside a container)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return "\nState:\tZ" in status or "\nState:\tX" in status


def proc_ids(pid: int) -> tuple[list[int], list[int], list[int]]:
    """The (real, effective, saved, fs) uids and gids of a process and its supplementary
    groups, from /proc/<pid>/status."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("Uid", "Gid", "Groups"):
            fields[name] = [int(part) for part in value.split()]
    return fields["Uid"], fields["Gid"], fields["Groups"]
