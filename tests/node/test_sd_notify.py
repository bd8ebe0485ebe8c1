"""sd_notify(3) without libsystemd (mailwarden.node.notify), over a real AF_UNIX socket."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from pathlib import Path

import pytest

from mailwarden.node.notify import notify, notify_reloading


def receiver(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    return sock


def test_fields_go_in_one_datagram(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "notify")
    with receiver(path) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        notify("READY=1", f"MAINPID={os.getpid()}")
        assert sock.recv(4096) == f"READY=1\nMAINPID={os.getpid()}".encode()


def test_at_means_the_abstract_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"mailwarden-test-{uuid.uuid4().hex}"
    with receiver("\0" + name) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        notify_reloading()
        first, second = sock.recv(4096).decode().split("\n")
    assert first == "RELOADING=1"
    assert second.startswith("MONOTONIC_USEC=") and int(second.split("=")[1]) > 0


def test_no_service_manager_is_no_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notify("READY=1")  # nothing to tell, nothing logged
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    with caplog.at_level(logging.WARNING, logger="mailwarden.node"):
        notify("READY=1")
    assert "cannot notify the service manager" in caplog.text
