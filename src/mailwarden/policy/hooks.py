"""The hook registry: the one list of policy hooks, and everything known about each.

The loader (:mod:`mailwarden.policy.script`) checks a script's hooks against ``parameters``;
the runner (:mod:`mailwarden.policy.runner`) checks what a hook answers against ``allowed``;
the SMTP session answers a failed or timed-out hook with ``failure`` and logs and counts its
refusals under ``phase`` and ``counter``; a test checks docs/policy.md's hook table against
``parameters``, ``runs`` and ``allowed``. Nothing else lists the hooks.

The hooks run by delivery (``pre_delivery``, ``post_delivery``) have ``stage=Stage.DELIVERY``
and ``failure=None``: no client waits for a reply, and the queue manager decides what a failed
hook means for the message (:mod:`mailwarden.policy.delivery`). A script's own SASL
mechanisms are not hooks: they are classes in its ``SASL_MECHANISMS`` table, with their own
contract (:mod:`mailwarden.auth.custom`), checked when the script loads.
Lookups are plain dict lookups of prebuilt specs.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from mailwarden.policy.actions import Accept, Defer, Discard, Hold, Queue, Reject
from mailwarden.policy.delivery import DELIVERY_ACTIONS
from mailwarden.smtp import replies
from mailwarden.smtp.replies import Reply


class Stage(enum.StrEnum):
    """Where a hook runs."""

    SESSION = "session"  # inside an SMTP conversation, with a client waiting for the reply
    DELIVERY = "delivery"  # while a queued message is delivered (no client waits for a reply)


@dataclass(frozen=True, slots=True)
class HookSpec:
    """One hook of the contract.

    ``allowed`` empty means the hook's result is ignored (``disconnect``). ``failure`` is the
    catalogue reply a client gets when the hook raises, times out or answers something not in
    ``allowed``; None when there is nobody to answer. ``phase`` names the SMTP phase in the
    refusal log lines and ``counter`` the :mod:`mailwarden.stats` counter of its refusals.
    """

    name: str
    parameters: tuple[str, ...]
    allowed: tuple[type, ...]
    failure: Reply | None
    runs: str
    description: str
    stage: Stage = Stage.SESSION
    phase: str = ""
    counter: str = ""

    @property
    def ignores_result(self) -> bool:
        return not self.allowed

    @property
    def signature(self) -> str:
        return f"async def {self.name}({', '.join(self.parameters)})"


_REPLY_ACTIONS: tuple[type, ...] = (Accept, Reject, Defer)

_SPECS: tuple[HookSpec, ...] = (
    HookSpec(
        name="connect",
        parameters=("conn",),
        allowed=_REPLY_ACTIONS,
        # At connect only 220, 421 and 554 may greet (RFC 5321 §3.1).
        failure=replies.SCRIPT_ERROR_AT_CONNECT,
        runs="a new connection was admitted, before the greeting",
        description="accept, refuse (554) or defer (421) a client before the greeting",
        phase="connect",
        counter="refused_connect",
    ),
    HookSpec(
        name="helo",
        parameters=("conn", "helo"),
        allowed=_REPLY_ACTIONS,
        failure=replies.SCRIPT_ERROR,
        runs="HELO or EHLO (again after STARTTLS)",
        description="judge the HELO/EHLO name",
        phase="helo",
        counter="refused_helo",
    ),
    HookSpec(
        name="auth",
        parameters=("conn", "credentials"),
        allowed=_REPLY_ACTIONS,
        # RFC 4954 §6: 454 4.7.0 for a temporary failure of the authentication check.
        failure=replies.AUTH_TEMPORARY_FAILURE,
        runs="the client finished an AUTH exchange",
        description="check the credentials a SASL exchange produced",
        phase="auth",
        counter="refused_auth",
    ),
    HookSpec(
        name="mail_from",
        parameters=("conn", "tx", "sender"),
        allowed=_REPLY_ACTIONS,
        failure=replies.SCRIPT_ERROR,
        runs="MAIL FROM, a new transaction",
        description="accept, rewrite or refuse the envelope sender",
        phase="mail",
        counter="refused_mail",
    ),
    HookSpec(
        name="rcpt_to",
        parameters=("conn", "tx", "recipient"),
        allowed=_REPLY_ACTIONS,
        failure=replies.SCRIPT_ERROR,
        runs="RCPT TO, after the built-in relay rule",
        description="accept, rewrite, route or refuse one recipient",
        phase="rcpt",
        counter="refused_rcpt",
    ),
    HookSpec(
        name="data",
        parameters=("conn", "tx", "message"),
        allowed=(Accept, Queue, Hold, Discard, Reject, Defer),
        failure=replies.SCRIPT_ERROR,
        runs="end of data (final `.` or last BDAT chunk)",
        description="queue, hold, discard or refuse the complete message",
        phase="data",
        counter="messages_rejected",
    ),
    HookSpec(
        name="vrfy",
        parameters=("conn", "argument"),
        allowed=_REPLY_ACTIONS,
        failure=replies.SCRIPT_ERROR,
        runs="VRFY",
        description="answer VRFY",
        phase="vrfy",
        counter="refused_vrfy",
    ),
    HookSpec(
        name="pre_delivery",
        parameters=("attempt",),
        allowed=DELIVERY_ACTIONS,
        failure=None,
        runs="before each delivery attempt of a queued message",
        description="change next hop, port, source IP, HELO, TLS, AUTH; or retry later, hold,"
        " bounce or delete",
        stage=Stage.DELIVERY,
        phase="pre_delivery",
    ),
    HookSpec(
        name="post_delivery",
        parameters=("attempt", "result"),
        allowed=DELIVERY_ACTIONS,
        failure=None,
        runs="after each delivery attempt, with every recipient's reply",
        description="override what happens next: retry at a time, bounce with an NDR, delete, hold",
        stage=Stage.DELIVERY,
        phase="post_delivery",
    ),
    HookSpec(
        name="disconnect",
        parameters=("conn",),
        allowed=(),
        failure=None,
        runs="the connection has closed",
        description="clean up after a connection",
    ),
)

HOOKS: Mapping[str, HookSpec] = {spec.name: spec for spec in _SPECS}
"""Every hook by name, in the order the phases run."""

CONNECT = HOOKS["connect"]
HELO = HOOKS["helo"]
AUTH = HOOKS["auth"]
MAIL_FROM = HOOKS["mail_from"]
RCPT_TO = HOOKS["rcpt_to"]
DATA = HOOKS["data"]
VRFY = HOOKS["vrfy"]
PRE_DELIVERY = HOOKS["pre_delivery"]
POST_DELIVERY = HOOKS["post_delivery"]
DISCONNECT = HOOKS["disconnect"]
