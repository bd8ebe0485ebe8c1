"""Calling a policy hook safely: a raising, slow or confused hook never crashes the server and
never turns into a 250. It becomes :class:`HookFailed` (the caller answers with the hook's failure
reply from the registry, ``451 4.3.0`` for most), a logged traceback with the connection id, and
one more on the ``script_errors`` counter."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from mailwarden.metrics.instruments import observe_hook
from mailwarden.policy.actions import Defer, Reject
from mailwarden.policy.hooks import HOOKS
from mailwarden.policy.script import PolicyScript
from mailwarden.stats import counters

log = logging.getLogger("mailwarden.policy")


class HookFailed(Exception):
    """The hook raised, timed out or answered nonsense; the caller answers with the hook's
    ``failure`` reply from the registry (:mod:`mailwarden.policy.hooks`)."""


async def call_hook(
    script: PolicyScript, name: str, connection_id: str, timeout: float | None, *args: Any
) -> Any:
    """Run hook ``name`` if the script has it. Returns its action (a raised Reject or Defer is
    returned like a returned one) or None. Raises HookFailed for everything else.

    ``timeout`` None means the caller enforces the time limit itself (the SMTP server does,
    with one sweep per second for all its sessions, cheaper than a timer per hook call).
    """
    hook = script.hooks.get(name)
    if hook is None:
        return None
    scope: asyncio.Timeout | None = None
    started = time.perf_counter()
    try:
        try:
            if timeout is None:
                result = await hook(*args)
            else:
                async with asyncio.timeout(timeout) as scope:
                    result = await hook(*args)
        finally:  # every call, answered, raised or cancelled: the latency histogram's
            observe_hook(name, time.perf_counter() - started)
    except (Reject, Defer) as action:
        result = action
    except TimeoutError:
        if scope is None or not scope.expired():
            # The script's own TimeoutError (its asyncio.wait_for, a socket timeout): a script
            # error like any other, logged with its traceback.
            counters.script_errors += 1
            log.exception("connection %s: hook %s raised", connection_id, name)
            raise HookFailed(name) from None
        counters.script_errors += 1
        log.error("connection %s: hook %s timed out after %.1fs", connection_id, name, timeout)
        raise HookFailed(name) from None
    # SystemExit and KeyboardInterrupt too: a script's sys.exit() or exit() would otherwise
    # escape the session task and stop the whole worker (asyncio re-raises them from tasks).
    # Real SIGINT never lands here: the node handles it with a loop signal handler.
    except (Exception, SystemExit, KeyboardInterrupt):
        counters.script_errors += 1
        log.exception("connection %s: hook %s raised", connection_id, name)
        raise HookFailed(name) from None
    # What each hook may answer is the registry's; anything else is a script error.
    allowed = HOOKS[name].allowed
    if result is None or not allowed:
        return None
    if not isinstance(result, allowed):
        counters.script_errors += 1
        log.error(
            "connection %s: hook %s returned %r; expected one of %s or None",
            connection_id,
            name,
            result,
            ", ".join(t.__name__ for t in allowed),
        )
        raise HookFailed(name)
    return result
