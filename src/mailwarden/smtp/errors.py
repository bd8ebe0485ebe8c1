"""Protocol errors of the sans-I/O machines, split by whose fault they are (h11's convention).

``LocalProtocolError``: our own side used a machine wrongly (a command in a state that does not
allow it); the message names the state. ``RemoteProtocolError``: the peer broke the protocol
(garbage, a wrong reply code, a reply nobody asked for); it carries what was received.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base of both: the connection cannot go on as SMTP."""


class LocalProtocolError(ProtocolError):
    """Our code asked a machine for something its state does not allow."""

    def __init__(self, message: str, state: str = "") -> None:
        super().__init__(f"{message} (state {state})" if state else message)
        self.state = state


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow; ``data`` is what it sent."""

    def __init__(self, message: str, data: bytes = b"") -> None:
        super().__init__(message)
        self.data = data
