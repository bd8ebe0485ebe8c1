"""The one record model of the spool: a message envelope and its recipients.

The session builds a :class:`SpoolRecord` to commit; the reader and the CLI get the same class
back from the shards (``QueuedMessage``/``QueuedRecipient`` in :mod:`mailwarden.spool.reader`
are these names too). Records are frozen: the store changes state with its own functions,
which write the row and emit an event, rather than by mutating a record.

A record read from the spool carries the envelope only (``headers`` is empty, ``body`` None):
the bytes can be large and are read on demand (:func:`mailwarden.spool.reader.stored_message`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailwarden.spool.states import RecipientState


@dataclass(frozen=True, slots=True)
class SpooledRecipient:
    """One recipient of a queued message, in RCPT order (``position`` in the spool)."""

    address: str
    params: dict[str, str | None]
    metadata: dict[str, Any]
    state: RecipientState = RecipientState.ACTIVE  # a plain value ("active") is taken too
    reason: str = ""
    retry_count: int = 0
    next_attempt: float | None = None  # None when committed: due at once (the received time)
    last_reply: str = ""
    delay_notified: bool = False  # a delay DSN went out for it (one warning, not one per retry)
    on_expiry: str = "discard"  # held: what the end of its retention does ("bounce": a DSN)

    def __post_init__(self) -> None:
        if type(self.state) is not RecipientState:
            object.__setattr__(self, "state", RecipientState(self.state))


@dataclass(frozen=True, slots=True)
class SpoolRecord:
    """Everything delivery needs about one accepted message."""

    id: str
    server_id: str
    received_at: float
    sender: str
    sender_params: dict[str, str | None]
    client_ip: str
    client_port: int
    helo: str | None
    tls: dict[str, Any] | None
    auth: dict[str, Any] | None
    metadata: dict[str, Any]
    headers: bytes = b""
    body: bytes | None = None  # in memory, or None when ``body_file`` holds it
    body_file: Path | None = None
    body_fd: int | None = None  # the open spill file, only while it is being committed
    size: int = 0
    recipients: tuple[SpooledRecipient, ...] = ()
    retry_count: int = 0
    next_attempt: float | None = None
    leased_by: str | None = None  # the delivery holding the message, until ``lease_until``
    lease_until: float | None = None

    def __post_init__(self) -> None:
        if type(self.recipients) is not tuple:
            object.__setattr__(self, "recipients", tuple(self.recipients))

    @property
    def state(self) -> str:
        """The message's overall state: the recipients' state when they agree, else mixed."""
        states = {r.state for r in self.recipients}
        return states.pop() if len(states) == 1 else "mixed"
