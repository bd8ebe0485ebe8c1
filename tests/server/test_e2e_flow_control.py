"""Write-side flow control: a client that pipelines commands and never reads its replies.

Without it the server buffers every reply it cannot send (about 2.5 MB of server memory per MB of
NOOPs sent, growing for as long as the client sends). With it the server stops reading while its
write buffer is above the transport's high-water mark, so the client's sending stalls, memory
stays bounded, and the idle timeout drops the client (RFC 5321 §4.5.3.2).
"""

from __future__ import annotations

import selectors
import socket
import ssl
import time
from pathlib import Path

import pytest
from tests.server.conftest import REPLY_TIMEOUT, RawClient, limits, wait_for_log, wait_until
from tests.support.node import Node, running_node

# What the client tries to send: enough that a server without flow control grows by far more
# than the bound below (about 60 MiB of buffered replies).
FLOOD_BYTES = 24 * 2**20
# The bound a worker's RSS must stay under while the client floods.
RSS_GROWTH_BOUND = 16 * 2**20
# No byte accepted by the kernel for this long: the server has stopped reading.
STALL_SECONDS = 2.0
COMMAND_TIMEOUT = 3


def rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid`` (VmRSS in /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def flood_without_reading(sock: socket.socket | ssl.SSLSocket, pid: int) -> tuple[int, int]:
    """Send NOOP lines without ever reading, until FLOOD_BYTES are sent, the server stops
    taking bytes for STALL_SECONDS, or the connection fails. Returns (bytes sent, peak RSS)."""
    chunk = b"NOOP\r\n" * 10_000
    view = memoryview(chunk)
    sent = 0
    peak = rss_bytes(pid)
    last_progress = time.monotonic()
    sock.setblocking(False)
    while sent < FLOOD_BYTES:
        try:
            n = sock.send(view)
        except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            if time.monotonic() - last_progress > STALL_SECONDS:
                break
            time.sleep(0.01)
            n = 0
        except OSError:
            break  # the server dropped us: nothing more to send
        if n:
            sent += n
            last_progress = time.monotonic()
            view = view[n:] or memoryview(chunk)  # whole lines only: a cut line is a 500
        peak = max(peak, rss_bytes(pid))
    return sent, peak


def dropped(sock: socket.socket | ssl.SSLSocket) -> bool:
    """The server has closed (or reset) the connection: sending fails or EOF is readable."""
    try:
        sock.send(b"NOOP\r\n")
    except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
        return False  # still open, its buffers full
    except OSError:
        return True
    return False


class SmallReceiveBufferClient(RawClient):
    """A client whose socket receive buffer is tiny, so unread replies back up at once. The
    buffer is set before connecting: shrinking it on an open connection makes Linux drop
    segments the peer was already allowed to send."""

    def __init__(self, port: int, timeout: float = REPLY_TIMEOUT) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(timeout)
        sock.connect(("127.0.0.1", port))
        self.sock = sock
        self._buffer = b""
        self.received = b""


def small_receive_buffer_client(node: Node) -> RawClient:
    client = SmallReceiveBufferClient(node.port)
    client.greeting()
    client.ehlo()
    return client


def _plain(node: Node, context: ssl.SSLContext) -> RawClient:
    return small_receive_buffer_client(node)


def _starttls(node: Node, context: ssl.SSLContext) -> RawClient:
    client = small_receive_buffer_client(node)
    assert client.cmd("STARTTLS").code == 220
    client.starttls(context)
    client.ehlo()
    return client


@pytest.mark.parametrize("connect", [_plain, _starttls], ids=["plain", "starttls"])
def test_client_that_never_reads_cannot_grow_server_memory(
    tmp_path: Path, tls_keys: str, client_context: ssl.SSLContext, connect: object
) -> None:
    body = limits(command_timeout=COMMAND_TIMEOUT)
    with running_node(tmp_path, server=tls_keys, body=body) as node:
        pid = node.process.pid  # workers = 1: the node process is the worker
        client = connect(node, client_context)  # type: ignore[operator]
        with client:
            before = rss_bytes(pid)
            sent, peak = flood_without_reading(client.sock, pid)
            growth = peak - before
            assert growth < RSS_GROWTH_BOUND, (
                f"worker RSS grew by {growth / 2**20:.1f} MiB while the client sent "
                f"{sent / 2**20:.1f} MiB of NOOP without reading"
            )
            # The server stopped reading long before the flood was through.
            assert sent < FLOOD_BYTES, f"the server read all {sent} bytes"
            # Paused, the connection is still subject to the idle timeout: it is dropped.
            wait_for_log(node, "timeout")
            wait_until(lambda: dropped(client.sock), "the server to drop the client")
        # The worker is unharmed and serves the next client.
        with RawClient(node.port) as other:
            other.greeting()
            assert other.cmd("NOOP").code == 250


def test_client_that_reads_late_gets_every_reply(tmp_path: Path) -> None:
    """Flow control only delays: a client that pipelines until the server stops reading, and
    only then reads, gets every reply in order, and the session goes on."""
    # HELP: a 6-octet command with a 2-line reply of about 110 octets, so replies outgrow the
    # socket buffers long before the commands do.
    count = 300_000
    with running_node(tmp_path) as node, small_receive_buffer_client(node) as client:
        help_reply = client.cmd("HELP").raw
        commands = b"HELP\r\n" * count + b"RSET\r\n"
        expected = help_reply * count + b"250 2.0.0 Reset OK\r\n"
        sock = client.sock
        sock.setblocking(False)
        data = memoryview(commands)
        # First send without reading, until the kernel stops taking bytes (or all are sent).
        stalled_since: float | None = None
        while data and (stalled_since is None or time.monotonic() - stalled_since < 1.0):
            try:
                data = data[sock.send(data) :]
                stalled_since = None
            except BlockingIOError:
                stalled_since = stalled_since or time.monotonic()
                time.sleep(0.01)
        # (The replies, about 33 MB, are far more than the socket buffers hold: the server's
        # transport has paused writing by now.)
        # Then read and send together, as a pipelining client does.
        received = bytearray()
        with selectors.DefaultSelector() as selector:
            selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
            deadline = time.monotonic() + 120
            while len(received) < len(expected):
                assert time.monotonic() < deadline, f"stuck after {len(received)} bytes"
                for _key, mask in selector.select(timeout=1.0):
                    if mask & selectors.EVENT_READ:
                        chunk = sock.recv(1 << 20)
                        assert chunk, "connection closed before every reply came"
                        received += chunk
                    if mask & selectors.EVENT_WRITE and data:
                        data = data[sock.send(data) :]
                        if not data:
                            selector.modify(sock, selectors.EVENT_READ)
        assert received == expected
        sock.setblocking(True)
        assert client.cmd("QUIT").code == 221
