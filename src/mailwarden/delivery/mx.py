"""MX resolution: the ordered connection targets for a destination.

Only :class:`Target` lives here for now; the resolver itself is part B of issue 7 (it writes
this same dataclass).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Target:
    preference: int
    host: str  # the MX (or route) host name, or the IP literal's text; TLS verifies this name
    address: str  # one IP address to connect to
    port: int = 25
