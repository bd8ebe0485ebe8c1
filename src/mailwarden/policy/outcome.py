"""What a hook's action means for the conversation, as pure functions the session applies.

Kept out of the session so each rule is tested on its own: the greeting a connect refusal
becomes, and what an end-of-data action does to the recipients.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mailwarden.policy.actions import Accept, Discard, Hold, Queue
from mailwarden.policy.context import Recipient, RecipientState
from mailwarden.smtp.replies import Reply


def greeting_refusal(reply: Reply) -> Reply:
    """A connect hook's Reject or Defer as a greeting: RFC 5321 §3.1 allows only 220, 421 and
    554 there, so any 5xx becomes 554 and any 4xx 421; enhanced code and text stay the script's."""
    if reply.is_permanent and reply.code != 554:
        return reply.replace(code=554)
    if reply.is_transient and reply.code != 421:
        return reply.replace(code=421)
    return reply


@dataclass(frozen=True, slots=True)
class EndOfData:
    """The data hook's decision applied: the recipients to store (all but the discarded ones)
    and the script's reply text for the 250, if it gave one."""

    kept: list[Recipient]
    text: str | None = None


def apply_end_of_data(
    action: Accept | Queue | Hold | Discard | None, recipients: Sequence[Recipient]
) -> EndOfData:
    """Apply the data hook's action (None: the default, queue) to ``recipients``, whose states
    the hook may already have set one by one. ``Hold`` holds only those still active, so a
    recipient the script discarded stays discarded; ``Queue``/``Accept`` merge their metadata
    into each recipient's own. Changes the recipients in place, as the script's calls do."""
    text: str | None = None
    if isinstance(action, Hold):
        for recipient in recipients:
            if recipient.state is RecipientState.ACTIVE:
                recipient.hold(action.reason, action.retention, action.on_expiry)
    elif isinstance(action, Discard):
        for recipient in recipients:
            recipient.discard(action.reason)
    elif isinstance(action, Queue | Accept):
        for recipient in recipients:
            recipient.metadata.update(action.metadata)
        text = action.text
    kept = [r for r in recipients if r.state is not RecipientState.DISCARDED]
    return EndOfData(kept, text)
