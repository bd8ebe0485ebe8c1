"""Per-process counters, cheap enough for the hot path (plain attribute increments)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(slots=True)
class Counters:
    connections: int = 0
    connections_refused: int = 0
    messages_queued: int = 0
    messages_held: int = 0
    messages_discarded: int = 0
    messages_rejected: int = 0
    spool_errors: int = 0
    script_errors: int = 0
    auth_failures: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


counters = Counters()
