"""Protocol errors of the sans-I/O machines, split by whose fault they are (h11's convention).

``LocalProtocolError``: our own side used a machine wrongly (a command in a state that does not
allow it); the message names the state. ``RemoteProtocolError``: the peer broke the protocol
(garbage, a wrong reply code, a reply nobody asked for); it carries what was received.
"""

from __future__ import annotations

import enum


class ProtocolError(Exception):
    """Base of both: the connection cannot go on as SMTP."""


class LocalProtocolError(ProtocolError, RuntimeError):
    """Our code asked a machine for something its state does not allow: a bug in the caller
    (the session, the delivery adapter), never something the peer can cause. ``state`` is the
    machine's state then (a string, or the machine's state enum), named in the message."""

    def __init__(self, message: str, state: str | enum.Enum = "") -> None:
        name = state.value if isinstance(state, enum.Enum) else state
        super().__init__(f"{message} (state {name})" if name else message)
        self.state = state


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow; ``data`` is what it sent."""

    def __init__(self, message: str, data: bytes = b"") -> None:
        super().__init__(message)
        self.data = data
