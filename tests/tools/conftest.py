"""Fixtures for the smtpping tests; the servers and helpers are in tests/support/smtpping.py.

- ``scripted_smtp``: a ScriptedSMTPServer on loopback, shut down after the test.
- ``dns_server``: a LoopbackDNS; smtpping is pointed at it with SMTPPING_NAMESERVER.
- ``refused_port``: a loopback port with nothing listening.
- ``debian`` / ``ours``: the command of Debian's smtpping and of ours.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator

import pytest
from tests.support.smtpping import (
    DEBIAN_SMTPPING,
    OUR_SMTPPING,
    LoopbackDNS,
    ScriptedSMTPServer,
)


@pytest.fixture
def scripted_smtp() -> Iterator[ScriptedSMTPServer]:
    server = ScriptedSMTPServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def refused_port() -> int:
    """A loopback port with nothing listening (bound then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def dns_server() -> Iterator[LoopbackDNS]:
    server = LoopbackDNS()
    yield server
    server.close()


@pytest.fixture
def debian() -> list[str]:
    assert os.access(DEBIAN_SMTPPING, os.X_OK), "install the Debian package smtpping"
    return [DEBIAN_SMTPPING]


@pytest.fixture
def ours() -> list[str]:
    return list(OUR_SMTPPING)
