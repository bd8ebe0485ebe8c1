"""The listening sockets: bound (not yet listening) before the privilege drop."""

from __future__ import annotations

import socket

from mailwarden.config import Config
from mailwarden.node.errors import StartupError


def bind_listeners(config: Config, reuse_port: bool) -> dict[str, list[socket.socket]]:
    """Bind (not yet listen) every listener's addresses, so that a port below 1024 is taken
    while still root and no connection is queued before the worker is ready. Raises
    StartupError naming the ``listen`` entry that cannot be bound."""
    bound: dict[str, list[socket.socket]] = {}
    try:
        for index, server in enumerate(config.servers):
            bound[server.id] = []
            for position, (host, port) in enumerate(server.addresses):
                try:
                    bound[server.id].extend(_bind(host, port, reuse_port))
                except OSError as error:
                    raise StartupError(
                        config.describe_problem(
                            ("servers", index, "listen", position),
                            f"cannot listen on {server.listen[position]}: "
                            f"{error.strerror or error}",
                        )
                    ) from None
    except BaseException:
        for sockets in bound.values():
            for sock in sockets:
                sock.close()
        raise
    return bound


def _bind(host: str, port: int, reuse_port: bool) -> list[socket.socket]:
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    seen = set()
    try:
        for family, kind, proto, _, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                # [::] means IPv6 only; 0.0.0.0 is a listen entry of its own.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets
