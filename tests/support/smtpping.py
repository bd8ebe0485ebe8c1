"""Real servers on loopback and a runner for the smtpping tests (an importable module).

- ``ScriptedSMTPServer``: a small threaded SMTP server that speaks HELO/EHLO, MAIL, RCPT,
  DATA, BDAT (RFC 3030) and QUIT, records every transaction, and can be told to
  reject a phase or to hang up, so Debian's smtpping and ours meet the same peer.
- ``LoopbackDNS``: an authoritative UDP DNS responder built on dnspython's message
  API; smtpping is pointed at it with SMTPPING_NAMESERVER.
- ``run_smtpping`` and ``normalise``: run a meter, compare two runs byte for byte.

Tests import these from here, never from a ``conftest`` (which pytest imports under one
name per session, so ``from conftest import`` breaks when other folders are collected too).
The fixtures that wrap them live in tests/tools/conftest.py.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rrset

DEBIAN_SMTPPING = "/usr/bin/smtpping"
OUR_SMTPPING = [sys.executable, "-m", "mailwarden.tools.smtpping.cli"]
# The smtpping under test is this checkout's, even where another copy of the
# package is installed (an editable install may point at a different clone).
_SOURCE = str(Path(__file__).resolve().parents[2] / "src")
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [_SOURCE, os.environ.get("PYTHONPATH")]))


@dataclass
class Transaction:
    helo: bytes = b""
    mail: bytes = b""
    rcpts: list[bytes] = field(default_factory=list)
    message: bytes = b""
    via_bdat: bool = False
    peer: str = ""


@dataclass
class ScriptedBehaviour:
    """How the scripted server answers; every field is a full reply line or None."""

    banner: bytes | None = b"220 scripted ESMTP\r\n"  # None: hang up at once
    mail_reply: bytes = b"250 2.1.0 ok\r\n"
    rcpt_reply: bytes = b"250 2.1.5 ok\r\n"
    eom_reply: bytes = b"250 2.0.0 queued\r\n"
    hang_up_after_data: bool = False
    silent_after: bytes | None = None  # a verb (b"MAIL") after which nothing is answered
    # Send every reply in pieces, each its own TCP segment: "bytes" or "lines".
    split: str | None = None


class ScriptedSMTPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024  # hundreds of meters may connect at once

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), ScriptedHandler)
        self.behaviour = ScriptedBehaviour()
        self.transactions: list[Transaction] = []
        self.lock = threading.Lock()

    @property
    def port(self) -> int:
        return self.server_address[1]


class ScriptedHandler(socketserver.StreamRequestHandler):
    server: ScriptedSMTPServer

    def handle(self) -> None:
        behaviour = self.server.behaviour
        if behaviour.banner is None:
            return
        send = self._send_in_pieces if behaviour.split else self.wfile.write
        send(behaviour.banner)
        transaction = Transaction()
        while line := self.rfile.readline():
            verb = line[:4].upper()
            if verb == behaviour.silent_after:
                self.rfile.read()  # say nothing until the client gives up
                return
            if verb in (b"HELO", b"EHLO"):
                transaction = Transaction(helo=line, peer=self.client_address[0])
                if verb == b"EHLO":
                    send(b"250-scripted\r\n250-PIPELINING\r\n250 CHUNKING\r\n")
                else:
                    send(b"250 scripted\r\n")
            elif verb == b"MAIL":
                transaction.mail = line
                send(behaviour.mail_reply)
            elif verb == b"RCPT":
                transaction.rcpts.append(line)
                send(behaviour.rcpt_reply)
            elif verb == b"DATA":
                send(b"354 go ahead\r\n")
                if behaviour.hang_up_after_data:
                    return
                transaction.message = self._read_data()
                self._keep(transaction)
                send(behaviour.eom_reply)
            elif verb == b"BDAT":
                size = int(line.split()[1])
                transaction.message = self.rfile.read(size)
                transaction.via_bdat = True
                self._keep(transaction)
                send(behaviour.eom_reply)
            elif verb == b"QUIT":
                send(b"221 2.0.0 bye\r\n")
                return
            else:
                send(b"502 5.5.2 not here\r\n")

    def _send_in_pieces(self, reply: bytes) -> None:
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.server.behaviour.split == "lines":
            pieces = reply.splitlines(keepends=True)
        else:
            pieces = [reply[index : index + 1] for index in range(len(reply))]
        for piece in pieces:
            self.connection.sendall(piece)
            time.sleep(0.001)  # so that each piece is read on its own

    def _read_data(self) -> bytes:
        lines = []
        while (line := self.rfile.readline()) not in (b".\r\n", b""):
            lines.append(line)
        return b"".join(lines)

    def _keep(self, transaction: Transaction) -> None:
        with self.server.lock:
            self.server.transactions.append(transaction)


# -- DNS ---------------------------------------------------------------------


class LoopbackDNS:
    """Answers from ``records``: {(name, type): [rdata text]}; unknown names NXDOMAIN."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], list[str]] = {}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.queries: list[tuple[str, str]] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def add(self, name: str, rdtype: str, *values: str) -> None:
        self.records.setdefault((name.rstrip(".").lower(), rdtype), []).extend(values)

    def _serve(self) -> None:
        while True:
            try:
                wire, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            query = dns.message.from_wire(wire)
            response = dns.message.make_response(query)
            response.flags |= dns.flags.AA
            question = query.question[0]
            name = question.name.to_text(omit_final_dot=True).lower()
            rdtype = dns.rdatatype.to_text(question.rdtype)
            self.queries.append((name, rdtype))
            values = self.records.get((name, rdtype))
            if values:
                response.answer.append(
                    dns.rrset.from_text_list(question.name, 300, "IN", rdtype, values)
                )
            elif not any(known == name for known, _ in self.records):
                response.set_rcode(dns.rcode.NXDOMAIN)
            self.sock.sendto(response.to_wire(), peer)

    def close(self) -> None:
        self.sock.close()


# -- running smtpping ----------------------------------------------------------


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


def run_smtpping(
    command: list[str], *args: str, nameserver: str | None = None, timeout: float = 60
) -> Ran:
    env = dict(os.environ)
    # Our smtpping never asks the machine's resolver in tests.
    env["SMTPPING_NAMESERVER"] = nameserver or "127.0.0.1:9"
    done = subprocess.run(
        [*command, *args], capture_output=True, text=True, env=env, timeout=timeout
    )
    return Ran(done.returncode, done.stdout, done.stderr)


# Timings only: "-1.00" (a phase never reached) stays as it is, IP addresses too.
MS = re.compile(r"(?<![-\d.])\d+\.\d\d(?![\d.])")


def normalise(text: str) -> str:
    """Replace every timing with N.NN so two runs compare byte for byte."""
    return MS.sub("N.NN", text)


def interrupt_during_wait(command: list[str]) -> str:
    """Run smtpping ``command`` (one that waits 60 s after its first ping: ``-w 60000``), send
    SIGINT once the first ping is printed, and return the rest of its output after checking it
    exited 0 (a Ctrl-C during the wait ends the run with its statistics, as 1.1 does)."""
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "SMTPPING_NAMESERVER": "127.0.0.1:9"},
    )
    assert process.stdout is not None
    assert process.stdout.readline().startswith("PING ")
    assert process.stdout.readline().startswith("seq=1, connect=")
    process.send_signal(signal.SIGINT)  # arrives during the 60 s wait
    rest = process.stdout.read()
    assert process.wait(timeout=30) == 0
    return rest
