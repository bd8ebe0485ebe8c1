"""The one recipient-state vocabulary, shared by the spool, the policy contexts and (to come)
the queue manager and history. It imports nothing from Mailwarden, so any package can use it
without an import cycle.

Life of a recipient::

    RCPT accepted ─▶ active ──attempt fails 4xx──▶ deferred ──next_attempt due──▶ (attempt)
                      │  ▲                           │
                      │  └──────── release ── held ◀─┘ (hold: quarantine, never attempted)
                      ├─ attempt 2xx ─▶ delivered      (final)
                      ├─ attempt 5xx, or retries exhausted ─▶ bounced (final, a DSN is due)
                      └─ policy discard ─▶ discarded   (final: accepted, never delivered)
    held ──its retention ends──▶ discarded, or bounced with a DSN (queue/retention.py)

A delivery in progress is not a state: it is a lease on the message (``leased_by``,
``lease_until`` in the spool), so a crashed delivery frees itself when the lease ends and the
recipient is still ``active`` or ``deferred``.
"""

from __future__ import annotations

import enum


class RecipientState(enum.StrEnum):
    """Where one recipient of a queued message stands. The values are what the spool stores."""

    ACTIVE = "active"  # waiting for its first attempt (or released from hold)
    DEFERRED = "deferred"  # a temporary failure; retried at ``next_attempt``
    HELD = "held"  # quarantine: never attempted; released, or ended at ``next_attempt``
    DISCARDED = "discarded"  # accepted for the sender but never delivered (policy)
    DELIVERED = "delivered"  # the next hop accepted it (2xx)
    BOUNCED = "bounced"  # failed for good (5xx or too many retries): a bounce is due

    @property
    def deliverable(self) -> bool:
        """Whether a delivery attempt may pick this recipient up once its next attempt is due."""
        return self in DELIVERABLE

    @property
    def final(self) -> bool:
        """Whether nothing more happens to this recipient: the message may leave the spool
        once all its recipients are final."""
        return self in FINAL


DELIVERABLE = frozenset({RecipientState.ACTIVE, RecipientState.DEFERRED})
FINAL = frozenset({RecipientState.DISCARDED, RecipientState.DELIVERED, RecipientState.BOUNCED})
