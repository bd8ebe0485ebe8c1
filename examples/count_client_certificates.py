"""How many TLS clients present a client certificate? Halon's ``stat()`` experiment.

The counter ``peer-cert`` gets one count per TLS connection, under ``yes`` (the client sent a
certificate) or ``no``; ``mailwarden stats`` shows the sums over every worker:

    $ mailwarden stats --json | jq .script
    {"peer-cert": {"no": 41, "yes": 3}}

Where it counts: the certificate is known only after STARTTLS (RFC 3207 §4.2: the client must
send EHLO again, and the server forgets what it knew before the handshake). So the ``helo``
hook of that second EHLO is the first to see ``conn.tls``; a ``conn.state`` mark keeps a
client that sends EHLO once more from being counted twice. Plain-text connections are not
counted. Note that a node does not ask clients for a certificate yet, so for now every TLS
client counts ``no``.
"""

from __future__ import annotations

from mailwarden.lib import stat
from mailwarden.policy.context import Connection, Helo

_COUNTED = "count_client_certificates.counted"  # conn.state key; prefixed to avoid clashes


async def helo(conn: Connection, helo: Helo) -> None:
    if conn.tls is None or conn.state.get(_COUNTED):
        return
    conn.state[_COUNTED] = True
    has_cert = conn.tls.peer_certificate_subject is not None
    stat("peer-cert", {"yes": has_cert, "no": not has_cert})
