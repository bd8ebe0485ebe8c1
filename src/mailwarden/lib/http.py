"""HTTP for policy scripts: ``await http.get(url)``, ``await http.post(url, json=…)``.

A thin layer over httpx for the operator's own services (a policy API, a reputation service,
a webhook). Every call is bounded as a whole by ``timeout`` seconds (connect, send, wait and
read together; httpx's own timeouts are per phase), the response body by ``max_bytes``, and
every failure is one exception type, :class:`HttpError`, whose ``temporary`` flag tells a
script whether to defer (4xx) or not: a service that is down or slow must not bounce mail.

Connections are pooled: one httpx client per worker event loop, shared by all connections.
"""

from __future__ import annotations

import asyncio
import json as json_module
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import httpx

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_TIMEOUT",
    "HttpError",
    "Response",
    "aclose",
    "get",
    "post",
    "request",
]

DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_BYTES = 10 * 1024 * 1024

_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
    weakref.WeakKeyDictionary()
)


ErrorKind = Literal["timeout", "connect", "transport", "status", "other"]


class HttpError(Exception):
    """An HTTP call that did not give a usable answer. ``temporary``: worth trying again
    later (no connection, timeout, a 5xx or 429 status) -- answer the client 4xx (``Defer``);
    False for an answer that will not change by waiting (another 4xx status, a body too large,
    a bad URL). ``status`` is the HTTP status when there was a response. ``kind`` says what
    failed: "timeout", "connect" (no connection), "transport" (the exchange broke or the
    answer is not HTTP), "status" (a status that is not 2xx) or "other"."""

    def __init__(
        self,
        method: str,
        url: str,
        reason: str,
        *,
        temporary: bool,
        status: int | None = None,
        kind: ErrorKind = "other",
    ) -> None:
        super().__init__(f"HTTP {method} {url}: {reason}")
        self.method = method
        self.url = url
        self.reason = reason
        self.temporary = temporary
        self.status = status
        self.kind = kind


@dataclass(frozen=True, slots=True)
class Response:
    """A complete response: ``status``, ``headers`` (case-insensitive), the body as ``content``
    bytes; ``text`` decodes it with the response's charset, ``json()`` parses it."""

    status: int
    headers: httpx.Headers
    content: bytes
    url: str
    method: str = "GET"
    encoding: str = "utf-8"

    @property
    def text(self) -> str:
        return self.content.decode(self.encoding, "replace")

    def json(self) -> Any:
        """The body parsed as JSON; HttpError (not temporary) when it is not JSON."""
        try:
            return json_module.loads(self.content)
        except ValueError as error:
            reason = f"body is not JSON: {error}"
            raise HttpError(self.method, self.url, reason, temporary=False) from None


def _client() -> httpx.AsyncClient:
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None or client.is_closed:
        # No timeout of httpx's own: each call's asyncio.timeout bounds the whole exchange.
        # trust_env=False: a proxy set in the worker's environment must not silently reroute
        # calls to the operator's services.
        client = httpx.AsyncClient(timeout=None, trust_env=False, follow_redirects=False)
        _clients[loop] = client
    return client


async def aclose() -> None:
    """Close this event loop's pooled connections (a worker does it when it stops)."""
    client = _clients.pop(asyncio.get_running_loop(), None)
    if client is not None:
        await client.aclose()


async def _read(response: httpx.Response, max_bytes: int, method: str, url: str) -> bytes:
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise HttpError(method, url, f"body of {declared} bytes over {max_bytes}", temporary=False)
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > max_bytes:
            raise HttpError(method, url, f"body over {max_bytes} bytes", temporary=False)
        chunks.append(chunk)
    return b"".join(chunks)


def _status_error(method: str, url: str, response: Response) -> HttpError:
    # RFC 9110 §15.6: a 5xx is the server's trouble; 429 (RFC 6585 §4) asks to come back.
    temporary = response.status >= 500 or response.status == 429
    phrase = httpx.codes.get_reason_phrase(response.status)
    return HttpError(
        method,
        url,
        f"status {response.status} {phrase}".strip(),
        temporary=temporary,
        status=response.status,
        kind="status",
    )


async def request(
    method: str,
    url: str,
    *,
    params: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    json: Any = None,
    data: Mapping[str, str] | None = None,
    content: bytes | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    max_bytes: int = DEFAULT_MAX_BYTES,
    check: bool = True,
) -> Response:
    """Send ``method`` to ``url`` (http or https) and read the whole response.

    ``json``, ``data`` (a form) or ``content`` is the request body. ``timeout`` bounds the
    whole call in seconds; ``max_bytes`` the body. With ``check`` (the default) a status that
    is not 2xx raises HttpError (temporary for 5xx and 429); ``check=False`` returns it.
    Redirects are not followed (a 3xx is returned with ``check=False``, else an error)."""
    method = method.upper()
    if not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    try:
        async with asyncio.timeout(timeout):
            result = await _exchange(method, url, params, headers, json, data, content, max_bytes)
    except TimeoutError:
        reason = f"no answer within {timeout:g}s"
        raise HttpError(method, url, reason, temporary=True, kind="timeout") from None
    if check and not 200 <= result.status < 300:
        raise _status_error(method, url, result)
    return result


async def _exchange(
    method: str,
    url: str,
    params: Mapping[str, str] | None,
    headers: Mapping[str, str] | None,
    json: Any,
    data: Mapping[str, str] | None,
    content: bytes | None,
    max_bytes: int,
) -> Response:
    try:
        built = _client().build_request(
            method, url, params=params, headers=headers, json=json, data=data, content=content
        )
    except (httpx.InvalidURL, httpx.UnsupportedProtocol, ValueError, TypeError) as error:
        raise HttpError(method, url, f"bad request: {error}", temporary=False) from None
    try:
        response = await _client().send(built, stream=True)
        try:
            body = await _read(response, max_bytes, method, url)
        finally:
            await response.aclose()
    except httpx.UnsupportedProtocol as error:
        raise HttpError(method, url, f"bad URL: {error}", temporary=False) from None
    except httpx.TransportError as error:
        # Refused, reset, unreachable, TLS failure, a malformed answer: the service's trouble.
        reason = str(error) or type(error).__name__
        kind: ErrorKind = "connect" if isinstance(error, httpx.ConnectError) else "transport"
        raise HttpError(method, url, reason, temporary=True, kind=kind) from None
    return Response(
        response.status_code,
        response.headers,
        body,
        str(response.url),
        method,
        response.encoding or "utf-8",
    )


async def get(url: str, **options: Any) -> Response:
    """``await http.get(url, params=…, headers=…, timeout=…)``: :func:`request` with GET."""
    return await request("GET", url, **options)


async def post(url: str, **options: Any) -> Response:
    """``await http.post(url, json=…, timeout=…)``: :func:`request` with POST."""
    return await request("POST", url, **options)
