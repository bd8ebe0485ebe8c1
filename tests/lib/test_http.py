"""The HTTP helper against a real HTTP server on loopback (the standard library's
ThreadingHTTPServer in a thread): answers, statuses, timeouts, refused connections, size
limits, and the temporary/permanent split a script turns into 4xx or not."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mailwarden.lib import http


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # quiet test output
        pass

    def _send(self, status: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        if path == "/score":
            body = {"query": query, "agent": self.headers.get("X-Policy", "")}
            self._send(200, json.dumps(body).encode())
        elif path.startswith("/status/"):
            self._send(int(path.rsplit("/", 1)[1]), b"{}")
        elif path == "/slow":
            time.sleep(3)
            self._send(200, b"{}")
        elif path == "/big":
            self._send(200, b"x" * 300_000, "text/plain")
        elif path == "/text":
            self._send(200, "caf\u00e9".encode("latin-1"), "text/plain; charset=latin-1")
        elif path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/score")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self._send(404, b"{}")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        received = self.rfile.read(length)
        body = {"received": received.decode(), "type": self.headers.get("Content-Type")}
        self._send(201, json.dumps(body).encode())


@pytest.fixture(scope="module")
def service() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(autouse=True)
async def pooled() -> AsyncIterator[None]:
    yield None
    await http.aclose()  # the test's event loop ends: close its connections


async def test_get_with_params_and_headers(service: str) -> None:
    response = await http.get(
        f"{service}/score", params={"ip": "192.0.2.1"}, headers={"X-Policy": "inbound"}
    )
    assert response.status == 200
    assert response.json() == {"query": "ip=192.0.2.1", "agent": "inbound"}
    assert response.headers["content-type"] == "application/json"


async def test_post_json_and_form(service: str) -> None:
    response = await http.post(f"{service}/report", json={"sender": "a@example.org"})
    assert response.status == 201
    assert response.json() == {
        "received": '{"sender":"a@example.org"}',
        "type": "application/json",
    }
    form = await http.post(f"{service}/report", data={"k": "v w"})
    assert form.json()["received"] == "k=v+w"


async def test_connections_are_reused(service: str) -> None:
    for _ in range(3):
        await http.get(f"{service}/score")
    assert http._client() is http._client()


async def test_5xx_and_429_are_temporary_other_4xx_are_not(service: str) -> None:
    for status, temporary in ((503, True), (500, True), (429, True), (404, False), (403, False)):
        with pytest.raises(http.HttpError) as caught:
            await http.get(f"{service}/status/{status}")
        assert (caught.value.status, caught.value.temporary) == (status, temporary)
        assert caught.value.kind == "status"
        assert f"status {status}" in str(caught.value)
    unchecked = await http.get(f"{service}/status/404", check=False)
    assert unchecked.status == 404


async def test_slow_service_times_out_as_temporary(service: str) -> None:
    started = time.monotonic()
    with pytest.raises(http.HttpError, match=r"no answer within 0\.5s") as caught:
        await http.get(f"{service}/slow", timeout=0.5)
    assert caught.value.temporary and caught.value.status is None
    assert caught.value.kind == "timeout"
    assert time.monotonic() - started < 2.5  # it did not wait for the 3 s answer


async def test_refused_connection_is_temporary() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        with pytest.raises(http.HttpError) as caught:
            await http.get(f"http://127.0.0.1:{port}/", timeout=2)
    assert caught.value.temporary and caught.value.status is None
    assert caught.value.kind == "connect"


async def test_body_over_the_limit_is_refused(service: str) -> None:
    with pytest.raises(http.HttpError, match="over 100000") as caught:
        await http.get(f"{service}/big", max_bytes=100_000)
    assert not caught.value.temporary
    assert len((await http.get(f"{service}/big")).content) == 300_000


async def test_text_uses_the_declared_charset_and_json_errors_are_clear(service: str) -> None:
    response = await http.get(f"{service}/text")
    assert response.text == "caf\u00e9"
    with pytest.raises(http.HttpError, match="not JSON") as caught:
        response.json()
    assert not caught.value.temporary


async def test_redirects_are_not_followed(service: str) -> None:
    response = await http.get(f"{service}/redirect", check=False)
    assert response.status == 302 and response.headers["location"] == "/score"
    with pytest.raises(http.HttpError, match="status 302") as caught:
        await http.get(f"{service}/redirect")
    assert not caught.value.temporary


async def test_bad_urls_and_options_are_refused() -> None:
    with pytest.raises(http.HttpError, match="bad") as caught:
        await http.get("ftp://127.0.0.1/file")
    assert not caught.value.temporary
    with pytest.raises(http.HttpError, match="bad"):
        await http.get("not a url")
    with pytest.raises(ValueError, match="timeout must be a positive"):
        await http.get("http://127.0.0.1/", timeout=0)
