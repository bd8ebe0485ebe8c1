"""What a policy hook decides: return (or raise) one of these actions.

Every action that ends in an SMTP reply carries the reply code, the RFC 3463 enhanced status
code and the text. Returning ``None`` takes the phase's documented default (see docs/policy.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mailwarden.queue.retention import HoldTerms, OnExpiry, parse_on_expiry, parse_retention
from mailwarden.smtp import replies
from mailwarden.smtp.address import parse_mailbox
from mailwarden.smtp.replies import Reply


@dataclass(frozen=True, slots=True)
class Accept:
    """Say yes. At MAIL or RCPT, ``sender``/``recipient`` rewrite the address; ``metadata`` is
    stored with the transaction (MAIL), the recipient (RCPT) or every recipient (DATA) for the
    delivery phase; ``text`` replaces the reply text (the code stays 2xx).

    Raises ValueError if a rewritten address breaks the RFC 5321 mailbox grammar."""

    text: str | None = None
    sender: str | None = None
    recipient: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # A rewritten address goes to the spool and later into the MAIL/RCPT commands of
        # delivery: without this check, a script bug (or data it copied from a header) could
        # put CR/LF or junk into the envelope. "" (null sender) and bare postmaster are valid.
        if self.sender:
            parse_mailbox(self.sender, utf8=True)
        if self.recipient is not None and self.recipient.lower() != "postmaster":
            parse_mailbox(self.recipient, utf8=True)


class _ReplyAction(Exception):
    """Base of Reject and Defer: an SMTP reply that may also be raised from deep in a script.

    What the script leaves out comes from the catalogue's default (``replies.SCRIPT_REJECT``,
    ``replies.SCRIPT_DEFER``), so the defaults are checked with the rest of the catalogue."""

    default: Reply = replies.SCRIPT_REJECT

    def __init__(
        self,
        reason: str | None = None,
        *,
        code: int | None = None,
        enhanced: str | None = None,
        lines: Sequence[str] = (),
        disconnect: bool = False,
    ) -> None:
        default = self.default
        self._check_class(default.code if code is None else code)
        if reason is None and code is None and enhanced is None and not lines:
            self.reply = default
        else:
            # Reply validates that the enhanced code's class matches the code (RFC 3463 §3).
            self.reply = default.replace(
                code=code, enhanced=enhanced, text=reason, lines=tuple(lines)
            )
        self.disconnect = disconnect
        super().__init__(self.reply.text)

    def _check_class(self, code: int) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        r = self.reply
        return f"{type(self).__name__}({r.code} {r.enhanced} {r.text!r})"


class Reject(_ReplyAction):
    """Refuse permanently: a 5xx reply (default ``550 5.7.1 Rejected by policy``)."""

    def _check_class(self, code: int) -> None:
        if not 500 <= code <= 599:
            raise ValueError(f"Reject needs a 5xx code, got {code}")


class Defer(_ReplyAction):
    """Refuse for now, the client retries: a 4xx reply (default ``451 4.7.1 Try again later``)."""

    default = replies.SCRIPT_DEFER

    def _check_class(self, code: int) -> None:
        if not 400 <= code <= 499:
            raise ValueError(f"Defer needs a 4xx code, got {code}")


@dataclass(frozen=True, slots=True)
class Queue:
    """End of data: queue the message for every recipient still active (the default), with
    ``metadata`` merged into each recipient's own."""

    metadata: Mapping[str, Any] = field(default_factory=dict)
    text: str | None = None


@dataclass(frozen=True, slots=True)
class Hold:
    """End of data (and ``pre_delivery``/``post_delivery``): keep the message in the spool,
    held (quarantined), for every recipient still active; an operator releases or deletes it
    later. The client gets 250.

    ``retention``: how long it is kept held, from now: seconds or a string with a unit
    (``"7d"``, ``"12h"``); ``0`` or ``"forever"``: until released; None: ``[queue]
    hold_retention``. When it ends the recipients still held are discarded, or with
    ``on_expiry="bounce"`` bounced with a DSN to the sender. Raises ValueError for a
    retention or ``on_expiry`` it cannot read (the hook's failure reply then applies)."""

    reason: str = "held by policy"
    retention: float | str | None = None  # seconds after validation (inf: for ever)
    on_expiry: str = "discard"

    def __post_init__(self) -> None:
        if self.retention is not None:
            object.__setattr__(self, "retention", parse_retention(self.retention))
        object.__setattr__(self, "on_expiry", parse_on_expiry(self.on_expiry).value)

    def terms(self, default: float) -> HoldTerms:
        """The hold's terms, ``default`` (seconds) when it gives no retention."""
        retention = default if self.retention is None else float(self.retention)
        return HoldTerms(retention, OnExpiry(self.on_expiry))


@dataclass(frozen=True, slots=True)
class Discard:
    """End of data: accept with 250 and drop the message (nothing is queued)."""

    reason: str = "discarded by policy"


Action = Accept | Reject | Defer | Queue | Hold | Discard
