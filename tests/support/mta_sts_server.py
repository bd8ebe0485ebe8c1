"""A real HTTPS server for MTA-STS policies (RFC 8461 §3.3) on a loopback address, port 443.

    with policy_server(ca, ["mta-sts.a.test"]) as server:
        server.address                       # "127.x.y.z": the A record of mta-sts.<domain>
        server.policies["mta-sts.a.test"] = Answer(body="version: STSv1\\n...")
        server.fetches["mta-sts.a.test"]     # how many times it was fetched

The certificate (trustme) is issued for the host names given; answers are chosen by the
Host header. Each server takes its own 127.0.0.0/8 address so that tests running side by
side can all have port 443 (the tests run as root).
"""

from __future__ import annotations

import random
import ssl
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import trustme


@dataclass
class Answer:
    body: str = ""
    status: int = 200
    content_type: str = "text/plain"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class PolicyServer:
    address: str
    port: int
    policies: dict[str, Answer] = field(default_factory=dict)
    fetches: Counter[str] = field(default_factory=Counter)


def policy_text(mode: str, mx: Sequence[str], max_age: int = 86400) -> str:
    lines = ["version: STSv1", f"mode: {mode}", *(f"mx: {m}" for m in mx), f"max_age: {max_age}"]
    return "\r\n".join(lines) + "\r\n"


def _handler(server: PolicyServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            host = (self.headers.get("Host") or "").split(":")[0].lower()
            server.fetches[host] += 1
            answer = server.policies.get(host)
            if answer is None or self.path != "/.well-known/mta-sts.txt":
                answer = Answer("not here\n", status=404)
            data = answer.body.encode()
            self.send_response(answer.status)
            self.send_header("Content-Type", answer.content_type)
            self.send_header("Content-Length", str(len(data)))
            for name, value in answer.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@contextmanager
def policy_server(
    ca: trustme.CA, hosts: Sequence[str], *, port: int = 443
) -> Iterator[PolicyServer]:
    """Serve policies over HTTPS with a certificate for ``hosts`` until the block ends."""
    cert = ca.issue_cert(*hosts)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    for _ in range(50):
        address = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"
        state = PolicyServer(address, port)
        try:
            httpd = ThreadingHTTPServer((address, port), _handler(state))
        except OSError:
            continue
        break
    else:
        raise RuntimeError(f"no loopback address with port {port} free")
    httpd.daemon_threads = True
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)
