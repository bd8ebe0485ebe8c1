"""docs/howto/test-an-smtp-server.md, run top to bottom as a reader would: in an empty
directory, the page's own files written out (certificate, configuration, policy script), its
zone served by a real nsd, its ``mailwarden run`` started, then every command it shows run
through bash with the placeholders filled in. Each command must exit 0 and print the key lines
below, and the page must show those lines too, so page and product cannot drift apart. A
command the page gains without an entry here fails the coverage test.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.support.dns_server import dns_server
from tests.support.howto import Command, blocks, page_commands
from tests.support.node import free_port

PAGE = Path(__file__).resolve().parents[2] / "docs" / "howto" / "test-an-smtp-server.md"
TLS = "openssl s_client -starttls smtp -connect 127.0.0.1:PORT"

# command as the page shows it -> regular expressions its output (stdout and stderr) must match;
# each must match what the page shows as well.
EXPECTED: dict[str, tuple[str, ...]] = {
    "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout key.pem"
    " -out cert.pem -days 30 -subj /CN=mx.example.org"
    " -addext subjectAltName=DNS:mx.example.org": ("-----",),
    "mailwarden config check --config mailwarden.toml": (
        r"mailwarden\.toml: OK \(1 server\(s\)\)",
        r"spool: .*/data/spool",
    ),
    "mailwarden run --config mailwarden.toml": (
        r"server inbound listening on 127\.0\.0\.1:PORT",
        r"node ready: 1 worker",
    ),
    "dig +short MX example.org @127.0.0.1 -p DNSPORT": (r"^10 mx\.example\.org\.$",),
    "dig +short A mx.example.org @127.0.0.1 -p DNSPORT": (r"^127\.0\.0\.1$",),
    "host -p DNSPORT -t MX example.org 127.0.0.1": (
        r"example\.org mail is handled by 10 mx\.example\.org\.",
    ),
    "dig +short TXT example.org @127.0.0.1 -p DNSPORT": (r'^"v=spf1 ip4:127\.0\.0\.1 -all"$',),
    "nc -zv 127.0.0.1 PORT": (r"Connection to 127\.0\.0\.1 PORT port .* succeeded!",),
    "{ sleep 1; printf 'EHLO client.example\\r\\n'; sleep 1; printf 'QUIT\\r\\n'; }"
    " | nc 127.0.0.1 PORT": (
        r"^220 mx\.example\.org ESMTP",
        r"^250 STARTTLS$",
        r"^221 2\.0\.0 Bye$",
    ),
    "swaks --server 127.0.0.1 --port PORT --from alice@client.example --to bob@example.org": (
        r"<-  250 2\.1\.5 Recipient OK",
        r"<-  250 2\.0\.0 Message queued as \w+",
    ),
    f"{TLS} -servername mx.example.org -CAfile cert.pem -verify_hostname mx.example.org"
    " -verify_return_error -brief </dev/null": (
        r"^Protocol version: TLSv1\.[23]$",
        r"^Peer certificate: CN = mx\.example\.org$",
        r"^Verification: OK$",
        r"^Verified peername: mx\.example\.org$",
    ),
    "printf '%s' alice | base64": (r"^YWxpY2U=$",),
    "printf '%s' secret | base64": (r"^c2VjcmV0$",),
    "echo VXNlcm5hbWU6 | base64 -d": (r"^Username:$",),
    "{ sleep 1; printf 'EHLO client.example\\n'; sleep 1; printf 'AUTH LOGIN\\n'; sleep 1;"
    " printf 'YWxpY2U=\\n'; sleep 1; printf 'c2VjcmV0\\n'; sleep 1; printf 'QUIT\\n'; }"
    f" | {TLS} -CAfile cert.pem -crlf -quiet": (
        r"^250 AUTH PLAIN LOGIN$",
        r"^334 VXNlcm5hbWU6$",
        r"^334 UGFzc3dvcmQ6$",
        r"^235 2\.7\.0 Authentication successful$",
    ),
    "printf '\\0alice\\0secret' | base64": (r"^AGFsaWNlAHNlY3JldA==$",),
    "smtpping -p PORT -c 3 -w 100 bob@example.org @127.0.0.1": (
        r"^PING bob@example\.org \(\[127\.0\.0\.1\]:PORT\)",
        r"^seq=3, connect=[\d.]+ ms, helo=",
        r"^3 e-mail messages transmitted$",
    ),
    "SMTPPING_NAMESERVER=127.0.0.1:DNSPORT smtpping -p PORT -c 1 bob@example.org": (
        r"^PING bob@example\.org \(\[127\.0\.0\.1\]:PORT\)",
        r"^1 e-mail messages transmitted$",
    ),
    "smtpping -p PORT -c 1 --starttls --auth alice:secret bob@example.org @127.0.0.1": (
        r"^1 e-mail messages transmitted$",
    ),
    "smtpping -p PORT -r -w 0 -P 4 --duration 3 bob@example.org @127.0.0.1": (
        r"^\d+ messages completed in [\d.]+ s, mean rate [\d.]+ msg/s$",
        r"^errors: none$",
    ),
    "mailwarden queue list --config mailwarden.toml": (
        r"^id +received +size +state +sender / recipients",
        r"from alice@client\.example",
    ),
    "mailwarden queue list --config mailwarden.toml sender=alice@client.example": (
        r"from alice@client\.example",
        r"^1 message\(s\) match sender=alice@client\.example$",
    ),
    "mailwarden stats --config mailwarden.toml": (
        r"│ messages_queued +│ \d+",
        r"│ auth_failures +│ 0 ",
        r"script counters \(stat\)",
        r"│ logins +│ ok +│ +2 │",
    ),
}

# `mailwarden stats` reads what the workers publish every 2 s: ask again until it shows.
EVENTUALLY = ("mailwarden stats",)
BACKGROUND = ("mailwarden run",)

# The `mailwarden` and `smtpping` of this interpreter (a virtual environment's too, when
# scripts/test runs without activating it), not Debian's /usr/bin/smtpping.
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


@dataclass
class Ran:
    command: Command
    returncode: int
    output: str


def fill(text: str, ports: dict[str, int]) -> str:
    for name in sorted(ports, key=len, reverse=True):  # DNSPORT before PORT
        text = re.sub(rf"\b{name}\b", str(ports[name]), text)
    return text


def matches(pattern: str, text: str) -> bool:
    return re.search(pattern, text, re.MULTILINE) is not None


def write_files(directory: Path, ports: dict[str, int]) -> dict[str, str]:
    """The page's files, and its zones (name -> records)."""
    zones: dict[str, str] = {}
    for block in blocks(PAGE):
        if "file" in block.attributes:
            text = fill(block.text, ports)
            if block.attributes["file"].endswith(".toml") and os.geteuid() == 0:
                # As root the node wants an account to serve as (the page says so).
                text = text.replace("[node]\n", '[node]\nuser = "root"\n', 1)
            (directory / block.attributes["file"]).write_text(text)
        if "zone" in block.attributes:
            zones[block.attributes["zone"]] = block.text
    return zones


def run(command: Command, directory: Path, ports: dict[str, int]) -> Ran:
    patterns = [fill(p, ports) for p in EXPECTED.get(command.text, ())]
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
        ready = all(matches(p, done.stdout) for p in patterns)
        if ready or not command.text.startswith(EVENTUALLY) or time.monotonic() > deadline:
            return Ran(command, done.returncode, done.stdout)
        time.sleep(0.5)


def start(command: Command, directory: Path, ports: dict[str, int]) -> subprocess.Popen[bytes]:
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


@dataclass
class Page:
    results: dict[int, Ran]  # by the command's line in the page
    ports: dict[str, int]


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    for tool in ("mailwarden", "smtpping", "swaks", "openssl", "dig", "host", "nc", "base64"):
        assert shutil.which(tool, path=ENV["PATH"]), (
            f"{tool} is not installed (scripts/test installs it)"
        )
    directory = tmp_path_factory.mktemp("howto")
    zones = write_files(directory, {"PORT": 0, "DNSPORT": 0})
    results: dict[int, Ran] = {}
    node: subprocess.Popen[bytes] | None = None
    with dns_server(directory / "dns", zones) as server:
        ports = {"PORT": free_port(), "DNSPORT": server.port}
        write_files(directory, ports)
        try:
            for command in page_commands(PAGE):
                if command.text.startswith(BACKGROUND):
                    node = start(command, directory, ports)
                    log = (directory / "run.log").read_text(errors="replace")
                    results[command.line] = Ran(command, 0, log)
                else:
                    results[command.line] = run(command, directory, ports)
            yield Page(results, ports)
        finally:
            if node is not None and node.poll() is None:
                os.killpg(node.pid, signal.SIGTERM)
                node.wait(timeout=30)


COMMANDS = page_commands(PAGE)


@pytest.mark.parametrize(
    "command", COMMANDS, ids=[f"line{c.line}-{c.text.split()[0]}" for c in COMMANDS]
)
def test_command_works_as_shown(command: Command, page: Page) -> None:
    result = page.results[command.line]
    assert result.returncode == 0, f"{command.text}\nexit {result.returncode}\n{result.output}"
    for pattern in EXPECTED[command.text]:
        # The page shows the placeholders themselves.
        assert matches(pattern, command.shown), f"the page shows no {pattern!r} for {command.text}"
        assert matches(fill(pattern, page.ports), result.output), (
            f"{command.text}: no line matching {pattern!r} in\n{result.output}"
        )


def test_every_command_of_the_page_is_checked() -> None:
    shown = [command.text for command in COMMANDS]
    untested = [text for text in shown if text not in EXPECTED]
    gone = [text for text in EXPECTED if text not in shown]
    assert not untested, f"commands of {PAGE.name} without expectations: {untested}"
    assert not gone, f"expectations for commands {PAGE.name} no longer shows: {gone}"
    assert len(shown) == len(set(shown)), "a command shown twice: give it one entry"
