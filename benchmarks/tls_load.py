"""The load of benchmarks/tls_accept.py: one message per connection, optionally over STARTTLS.

    python benchmarks/tls_load.py --port PORT [--mode plain|starttls|resume] [--seconds 10]
        [--processes 2] [--threads 4] [--size 1]

Each of ``--processes`` processes runs ``--threads`` clients, each a loop of connections for
``--seconds``: greeting, EHLO, (STARTTLS, the TLS handshake, EHLO again,) MAIL, RCPT, DATA with
a ``--size`` KiB message, QUIT. Modes:

- ``plain``: no TLS, the baseline;
- ``starttls``: a full TLS handshake on every connection (TLS 1.3 only, so ECDHE; the server
  certificate is not verified: the cost measured is the server's, not a chain check);
- ``resume``: as ``starttls``, but each client offers the session (TLS 1.3 ticket, RFC 8446
  §2.2) that its previous connection received, so the server may skip the certificate and its
  signature (a PSK with (EC)DHE handshake).

Why this and not smtp-source, swaks or ``smtpping --starttls``: smtp-source has no STARTTLS,
swaks spends far more CPU per connection than the servers measured, and asyncio's
``start_tls`` (under our smtpping) cannot offer a session to resume; blocking ``ssl`` sockets
can (``wrap_socket(session=...)``) and release the GIL during the handshake. The same program
drives every server.

Prints one JSON object: ``connections`` completed (250 after the data), ``failures``,
``resumed`` (handshakes the server accepted a ticket for), ``offered`` (handshakes that
offered one), ``per_second`` (completed connections in each whole second) and ``seconds``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field


class SmtpFailure(Exception):
    """The server answered something other than what the load expects."""


@dataclass
class Tally:
    connections: int = 0
    failures: int = 0
    resumed: int = 0
    offered: int = 0
    finished_at: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def read_reply(sock: socket.socket | ssl.SSLSocket, buffer: bytearray) -> int:
    """The code of the next (possibly multi-line) reply; the bytes after it stay in ``buffer``."""
    while True:
        end = buffer.find(b"\r\n")
        while end >= 0:
            line = bytes(buffer[: end + 2])
            del buffer[: end + 2]
            if len(line) >= 4 and line[3:4] != b"-":
                return int(line[:3])
            end = buffer.find(b"\r\n")
        chunk = sock.recv(65536)
        if not chunk:
            raise SmtpFailure("connection closed")
        buffer.extend(chunk)


def expect(sock: socket.socket | ssl.SSLSocket, buffer: bytearray, wanted: int) -> None:
    code = read_reply(sock, buffer)
    if code != wanted:
        raise SmtpFailure(f"expected {wanted}, got {code}")


def one_connection(
    port: int, context: ssl.SSLContext | None, session: ssl.SSLSession | None, message: bytes
) -> tuple[ssl.SSLSession | None, bool]:
    """One transaction on a new connection; the TLS session it got and whether it resumed."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock: socket.socket | ssl.SSLSocket = raw
    reused = False
    try:
        buffer = bytearray()
        expect(sock, buffer, 220)
        sock.sendall(b"EHLO load.example\r\n")
        expect(sock, buffer, 250)
        if context is not None:
            sock.sendall(b"STARTTLS\r\n")
            expect(sock, buffer, 220)
            sock = context.wrap_socket(raw, server_hostname="mx.bench.example", session=session)
            buffer.clear()  # RFC 3207 §4.2: nothing read before the handshake counts
            sock.sendall(b"EHLO load.example\r\n")
            expect(sock, buffer, 250)
            reused = sock.session_reused  # type: ignore[union-attr]
        # RFC 2920 pipelining: both servers offer it; one round trip for the envelope.
        sock.sendall(b"MAIL FROM:<load@bench.example>\r\nRCPT TO:<test@example.org>\r\nDATA\r\n")
        expect(sock, buffer, 250)
        expect(sock, buffer, 250)
        expect(sock, buffer, 354)
        sock.sendall(message)
        expect(sock, buffer, 250)
        sock.sendall(b"QUIT\r\n")
        # TLS 1.3 tickets arrive after the handshake; by now they have been read.
        new_session = sock.session if isinstance(sock, ssl.SSLSocket) else None
        return new_session, reused
    finally:
        sock.close()


def client_loop(
    port: int, mode: str, deadline: float, message: bytes, tally: Tally
) -> None:  # one thread
    context = None
    if mode != "plain":
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.minimum_version = ssl.TLSVersion.TLSv1_3
    session: ssl.SSLSession | None = None
    while time.monotonic() < deadline:
        offered = session is not None
        try:
            got, reused = one_connection(port, context, session, message)
        except (OSError, SmtpFailure):
            with tally.lock:
                tally.failures += 1
            session = None
            continue
        if mode == "resume":
            session = got
        with tally.lock:
            tally.connections += 1
            tally.offered += offered
            tally.resumed += reused
            tally.finished_at.append(time.monotonic())


def run_process(args: argparse.Namespace, start: float, results: multiprocessing.Queue) -> None:
    body = b"Subject: tls load\r\n\r\n" + (b"x" * 76 + b"\r\n") * max(1, args.size * 1024 // 78)
    message = body + b".\r\n"
    tally = Tally()
    deadline = start + args.seconds
    threads = [
        threading.Thread(target=client_loop, args=(args.port, args.mode, deadline, message, tally))
        for _ in range(args.threads)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results.put(
        {
            "connections": tally.connections,
            "failures": tally.failures,
            "resumed": tally.resumed,
            "offered": tally.offered,
            "finished_at": tally.finished_at,
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", choices=("plain", "starttls", "resume"), default="starttls")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4, help="clients per process")
    parser.add_argument("--size", type=int, default=1, help="message size in KiB")
    args = parser.parse_args()
    start = time.monotonic()
    results: multiprocessing.Queue = multiprocessing.Queue()
    processes = [
        multiprocessing.Process(target=run_process, args=(args, start, results))
        for _ in range(args.processes)
    ]
    for process in processes:
        process.start()
    parts = [results.get() for _ in processes]
    for process in processes:
        process.join()
    whole = int(args.seconds)
    per_second = [0] * whole
    for part in parts:
        for moment in part["finished_at"]:
            second = int(moment - start)
            if second < whole:
                per_second[second] += 1
    total = {key: sum(part[key] for part in parts) for key in ("connections", "failures")}
    total |= {key: sum(part[key] for part in parts) for key in ("resumed", "offered")}
    print(json.dumps(total | {"per_second": per_second, "seconds": args.seconds}))


if __name__ == "__main__":
    main()
