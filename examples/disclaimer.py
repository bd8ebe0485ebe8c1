"""Outbound disclaimer and attachment stripping at end of data: editing the message body.

What it does to mail from authenticated users (submission), in this order:

1. Replaces every attachment whose file name ends in an executable extension (``.exe``,
   ``.scr``, …) by a short text note naming it: the recipient learns it was there, and the
   program never leaves. Parts are found with ``dlp.scan``, whose parts name what to replace.
2. Appends the company disclaimer to the text/plain part and, as HTML, inside ``<body>`` of the
   text/html part, in each part's own charset and transfer encoding.

Mail from outside is left alone: its body is not even read, so the spool keeps it as received.
Everything the script does not edit keeps its octets. Sign with DKIM after this, never before:
``dkim.sign`` signs the message as edited, and refuses body edits after it.
"""

from __future__ import annotations

from mailwarden.lib import dlp
from mailwarden.policy.context import Connection, Message, Transaction

DISCLAIMER = (
    "-- \n"
    "This message is confidential and meant for its recipients only. If you received it\n"
    "by mistake, please tell the sender and delete it."
)
DISCLAIMER_HTML = (
    '<hr><p style="font-size:small;color:#555">This message is confidential and meant for its '
    "recipients only. If you received it by mistake, please tell the sender and delete it.</p>"
)
BLOCKED_EXTENSIONS = frozenset({"exe", "scr", "com", "bat", "cmd", "pif", "vbs", "js", "jar"})


async def data(conn: Connection, tx: Transaction, message: Message) -> None:
    if conn.auth is None:
        return None
    for part in await dlp.scan(message):
        if part.extension in BLOCKED_EXTENSIONS:
            await message.replace_part(
                part, f"The attachment {part.filename} was removed: programs are not sent.\n"
            )
    await message.append_text(DISCLAIMER, html=DISCLAIMER_HTML)
    return None
