"""What the store tells its subscribers (history, to come): typed events, after the commit.

An event is emitted only once the transaction that made it true has committed, that is after
its fsync (``synchronous=FULL``): a subscriber never records a message that a crash could still
take back. Subscribers run in the store's event loop, in commit order; one that raises is
logged and skipped, and never fails the commit nor keeps the other subscribers from the event
(the message is queued whatever history makes of it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from mailwarden.spool.records import SpoolRecord
from mailwarden.spool.states import RecipientState

log = logging.getLogger("mailwarden.spool")


@dataclass(frozen=True, slots=True)
class MessageQueued:
    """A message was committed; ``record`` has its envelope and its recipients."""

    record: SpoolRecord


@dataclass(frozen=True, slots=True)
class RecipientStateChanged:
    message_id: str
    position: int  # the recipient's place in RCPT order
    address: str
    state: RecipientState
    reason: str
    retry_count: int
    next_attempt: float
    last_reply: str


@dataclass(frozen=True, slots=True)
class MessageRemoved:
    message_id: str
    reason: str


SpoolEvent = MessageQueued | RecipientStateChanged | MessageRemoved
Subscriber = Callable[[SpoolEvent], None]


class EventSink:
    """The subscribers of one store."""

    __slots__ = ("_subscribers",)

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []

    def __bool__(self) -> bool:
        return bool(self._subscribers)  # lets the commit path skip building events

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Call ``subscriber`` with every event from now on; returns the unsubscribe call."""
        self._subscribers.append(subscriber)
        return lambda: self._subscribers.remove(subscriber)

    def emit(self, events: Iterable[SpoolEvent]) -> None:
        for event in events:
            for subscriber in tuple(self._subscribers):
                try:
                    subscriber(event)
                except Exception:
                    log.exception("spool event subscriber %r failed on %r", subscriber, event)
