"""A UDP forwarder in front of a real DNS server that counts the questions it passes on, so a
test can tell a cached answer (no query reached the server) from a fresh one.

    with counting_forwarder(nsd.address) as counter:
        dns.configure([counter.address])
        ...
        counter.count("www.example.test", "A")   # queries that reached nsd
"""

from __future__ import annotations

import socket
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import dns.message
import dns.rdatatype


@dataclass
class QueryCounter:
    address: str
    seen: Counter[tuple[str, str]] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, name: str, rdtype: str) -> int:
        with self.lock:
            return self.seen[(name.lower().rstrip("."), rdtype.upper())]

    def total(self) -> int:
        with self.lock:
            return sum(self.seen.values())


def _serve(
    sock: socket.socket, upstream: tuple[str, int], counter: QueryCounter, stop: threading.Event
) -> None:
    sock.settimeout(0.1)  # a closed socket does not wake a blocked recvfrom: poll for stop
    while not stop.is_set():
        try:
            wire, client = sock.recvfrom(65535)
        except TimeoutError:
            continue
        except OSError:
            return
        try:
            question = dns.message.from_wire(wire).question[0]
        except Exception:
            continue
        key = (
            question.name.to_text(omit_final_dot=True).lower(),
            dns.rdatatype.to_text(question.rdtype),
        )
        with counter.lock:
            counter.seen[key] += 1
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
            out.settimeout(2.0)
            try:
                out.sendto(wire, upstream)
                reply = out.recv(65535)
            except OSError:
                continue  # the server did not answer: neither do we
        try:
            sock.sendto(reply, client)
        except OSError:
            return


@contextmanager
def counting_forwarder(upstream: str) -> Iterator[QueryCounter]:
    """Forward UDP queries on a free loopback port to ``upstream`` (``ip:port``), counting
    each question by (name, type)."""
    host, _, port = upstream.rpartition(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    counter = QueryCounter(f"127.0.0.1:{sock.getsockname()[1]}")
    stop = threading.Event()
    args = (sock, (host, int(port)), counter, stop)
    thread = threading.Thread(target=_serve, args=args, daemon=True)
    thread.start()
    try:
        yield counter
    finally:
        stop.set()
        thread.join(timeout=5)
        sock.close()
