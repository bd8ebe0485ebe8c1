"""Spool failures, each carrying the SMTP reply the client gets: always a 4xx, so the sender
keeps the message and retries (a local problem must never bounce mail, RFC 5321 §4.2.5)."""

from __future__ import annotations

import errno

from mailwarden.smtp import replies
from mailwarden.smtp.replies import Reply


class SpoolError(Exception):
    """The message could not be stored; ``reply`` is the 451 to send."""

    def __init__(self, reply: Reply, detail: str) -> None:
        super().__init__(detail)
        self.reply = reply


def reply_for_os_error(error: OSError) -> Reply:
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return replies.SPOOL_FULL
    return replies.SPOOL_WRITE_FAILED
