"""Telling the service manager how the node is doing (sd_notify without libsystemd)."""

from __future__ import annotations

import logging
import os
import socket
import time

# One logger for the whole node, so that log lines read as they always have.
log = logging.getLogger("mailwarden.node")


def notify(*fields: str) -> None:
    """Send ``fields`` (``READY=1`` …) to the service manager, if ``$NOTIFY_SOCKET`` names one:
    one datagram over AF_UNIX, ``@`` meaning the abstract namespace (sd_notify(3)). Failure to
    notify never stops the node; it is logged."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    target = "\0" + address[1:] if address.startswith("@") else address
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(fields).encode(), target)
    except OSError as error:
        log.warning("cannot notify the service manager at %s: %s", address, error)


def notify_reloading() -> None:
    # systemd's reload protocol asks for the CLOCK_MONOTONIC time with RELOADING=1, so that it
    # can tell this reload from an earlier one (sd_notify(3), "RELOADING=1").
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notify("RELOADING=1", f"MONOTONIC_USEC={usec}")
