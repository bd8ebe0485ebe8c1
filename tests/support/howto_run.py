"""Run a how-to of docs/howto/ as a reader would, for the tests of tests/docs/: the page's files
written out into an empty directory (with its placeholders filled in), its constant edits
applied to a copy of an example, its ``mailwarden run`` started in the background and every
other command it shows run through bash, in order.

Placeholders are upper-case words such as ``PORT``; ``edit=FILE`` blocks hold ``NAME = value``
lines that replace the constants of the same name at the top of ``examples/FILE``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.howto import Block, Command, blocks, page_commands

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

# The `mailwarden` of this interpreter (a virtual environment's too, when scripts/test runs
# without activating it).
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


@dataclass
class Ran:
    command: Command
    returncode: int
    output: str


def fill(text: str, ports: Mapping[str, int | str]) -> str:
    for name in sorted(ports, key=len, reverse=True):  # DNSPORT before PORT
        text = re.sub(rf"\b{name}\b", str(ports[name]), text)
    return text


def matches(pattern: str, text: str) -> bool:
    return re.search(pattern, text, re.MULTILINE) is not None


def edited_example(block: Block) -> str:
    """examples/FILE with the block's ``NAME = value`` lines in place of its own (each once)."""
    source = (EXAMPLES / block.attributes["edit"]).read_text()
    for line in block.text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name = re.split(r"[:= ]", line, maxsplit=1)[0]
        pattern = re.compile(rf"^{name}(: [^=]+)? = .*$", re.MULTILINE)
        source, replaced = pattern.subn(lambda _, line=line: line, source)
        if replaced != 1:
            raise ValueError(f"{block.attributes['edit']} has no constant {name} to edit")
    return source


def write_files(page: Path, directory: Path, ports: Mapping[str, int | str]) -> dict[str, str]:
    """The page's files and edited examples, and its zones (name -> records)."""
    zones: dict[str, str] = {}
    for block in blocks(page):
        if "file" in block.attributes:
            text = fill(block.text, ports)
            if block.attributes["file"].endswith(".toml") and os.geteuid() == 0:
                # As root the node wants an account to serve as (the pages say so).
                text = text.replace("[node]\n", '[node]\nuser = "root"\n', 1)
            (directory / block.attributes["file"]).write_text(text)
        if "edit" in block.attributes:
            (directory / block.attributes["edit"]).write_text(edited_example(block))
        if "zone" in block.attributes:
            zones[block.attributes["zone"]] = block.text
    return zones


def run(
    command: Command,
    directory: Path,
    ports: Mapping[str, int | str],
    patterns: tuple[str, ...],
    eventually: bool = False,
) -> Ran:
    """One command through bash; ``eventually``: again until its patterns match (20 s)."""
    wanted = [fill(p, ports) for p in patterns]
    deadline = time.monotonic() + 20
    while True:
        done = subprocess.run(
            ["bash", "-o", "pipefail", "-c", fill(command.text, ports)],
            cwd=directory,
            env=ENV,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=120,
        )
        ready = all(matches(p, done.stdout) for p in wanted)
        if ready or not eventually or time.monotonic() > deadline:
            return Ran(command, done.returncode, done.stdout)
        time.sleep(0.5)


@contextmanager
def running_page(
    page: Path,
    directory: Path,
    ports: Mapping[str, int | str],
    expected: Mapping[str, tuple[str, ...]],
    eventually: tuple[str, ...] = ("mailwarden stats",),
) -> Iterator[dict[int, Ran]]:
    """Every command of the page run in ``directory`` (its files written first), by line; the
    page's ``mailwarden run`` runs until the block ends."""
    write_files(page, directory, ports)
    results: dict[int, Ran] = {}
    node: subprocess.Popen[bytes] | None = None
    try:
        for command in page_commands(page):
            patterns = expected.get(command.text, ())
            if command.text.startswith("mailwarden run"):
                node = start(command, directory, ports)
                log = (directory / "run.log").read_text(errors="replace")
                results[command.line] = Ran(command, 0, log)
            else:
                again = command.text.startswith(eventually)
                results[command.line] = run(command, directory, ports, patterns, again)
        yield results
    finally:
        if node is not None and node.poll() is None:
            os.killpg(node.pid, signal.SIGTERM)
            node.wait(timeout=30)


def start(
    command: Command, directory: Path, ports: Mapping[str, int | str]
) -> subprocess.Popen[bytes]:
    """The page's ``mailwarden run``, in the background, in its own process group."""
    log = directory / "run.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["bash", "-c", "exec " + fill(command.text, ports)],
            cwd=directory,
            env=ENV,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 30
    while "node ready: " not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"mailwarden run did not get ready: {log.read_text()}")
        time.sleep(0.05)
    return process


def check(result: Ran, patterns: tuple[str, ...], ports: Mapping[str, int | str]) -> None:
    """The command exited 0 and printed, like the page shows, every one of ``patterns``."""
    text = result.command.text
    assert result.returncode == 0, f"{text}\nexit {result.returncode}\n{result.output}"
    for pattern in patterns:
        assert matches(pattern, result.command.shown), f"the page shows no {pattern!r} for {text}"
        assert matches(fill(pattern, ports), result.output), (
            f"{text}: no line matching {pattern!r} in\n{result.output}"
        )


def coverage(page: Path, expected: Mapping[str, tuple[str, ...]]) -> None:
    """Every command of the page has expectations, and every expectation a command."""
    shown = [command.text for command in page_commands(page)]
    untested = [text for text in shown if text not in expected]
    gone = [text for text in expected if text not in shown]
    assert not untested, f"commands of {page.name} without expectations: {untested}"
    assert not gone, f"expectations for commands {page.name} no longer shows: {gone}"
    assert len(shown) == len(set(shown)), "a command shown twice: give it one entry"
