"""A per-IP limit on concurrent connections, kept in the script's own module state.

The server already has ``[servers.limits] connections_per_ip`` (421 4.7.0 before any script
runs). This script shows how to do the same with your own rules: a lower limit for unknown
clients, none for the networks in the configuration's ``trusted_networks``.

How the count stays right:

* ``connect`` counts the connection and marks it in ``conn.state``; a refused connection is not
  counted, so it does not take a slot from the ones that were let in.
* ``disconnect`` runs for every connection that reached ``connect`` (also after a 421, a
  timeout or a raising hook), and gives the slot back only if this connection took one.

Where the count lives, and what that means:

* Module state is per worker process: with ``node.workers = 4`` each worker counts its own
  connections, so a client can hold up to 4 × the limit. Use one worker, or a shared store.
* A reload imports the script afresh with an empty count. Connections opened before the reload
  keep the old script (and give their slots back to the old count), so for a while after a
  reload a client may hold more than the limit; the count never goes wrong or negative.
"""

from __future__ import annotations

from collections import Counter

from mailwarden.policy.actions import Defer
from mailwarden.policy.context import Connection

MAX_CONNECTIONS_PER_IP = 2

# Open connections per client IP in this worker. Only ``connect`` and ``disconnect`` touch it,
# and neither awaits between reading and writing it, so no lock is needed on one event loop.
open_connections: Counter[str] = Counter()

_COUNTED = "connection_limit.counted"  # conn.state key; prefixed to avoid clashes


async def connect(conn: Connection) -> Defer | None:
    if conn.trusted:
        return None
    if open_connections[conn.remote_ip] >= MAX_CONNECTIONS_PER_IP:
        # The server turns any Defer at connect into a 421 greeting and closes (RFC 5321 §3.1).
        return Defer("Too many connections from your address", code=421, enhanced="4.7.0")
    open_connections[conn.remote_ip] += 1
    conn.state[_COUNTED] = True
    return None  # default: 220 greeting


async def disconnect(conn: Connection) -> None:
    if not conn.state.pop(_COUNTED, False):
        return
    open_connections[conn.remote_ip] -= 1
    if open_connections[conn.remote_ip] <= 0:
        del open_connections[conn.remote_ip]  # keep the Counter as small as the open set
