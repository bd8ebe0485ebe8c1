"""The contract of a SASL mechanism written in a policy script (RFC 4422, RFC 4954 §4).

A script declares its mechanisms in a module-level table, name to class::

    SASL_MECHANISMS = {"CRAM-MD5": CramMd5}

    class CramMd5:
        safe_in_clear = False  # optional; True: offered before STARTTLS too

        async def step(self, conn, response: bytes | None) -> Challenge | Success | Failure:
            ...

The server makes one instance (``CramMd5()``, no arguments) per AUTH exchange, so an
instance's attributes are the state of one exchange and never leak into the next. ``step``
gets each client response base64-decoded (None on the first step when the client sent no
initial response; ``b""`` for an empty one, ``=`` in RFC 4954 §4) and answers with

* :class:`~mailwarden.auth.sasl.Challenge` ``(data)``: sent base64-encoded in a 334 reply;
* :class:`Success` ``(identity)``: 235 2.7.0, ``conn.auth`` becomes that identity and mechanism;
* :class:`Failure` ``()``: 535 5.7.8 (counted towards the listener's ``auth_failures``).

A raising or slow step (past ``hook_timeout``), any other answer, a ``Success`` whose identity
is not a printable string of 1-255 characters, or a tenth challenge in one exchange is a script
error: 454 4.7.0, never 235. The client cancelling with ``*`` (501 5.0.0) or sending bad base64
(501 5.5.2) is answered by the server without calling ``step`` again, and each response is one
line of at most 12288 octets (RFC 4954 §4). The ``auth`` hook does not run for these
mechanisms: ``Success`` is the decision. Imports nothing from :mod:`mailwarden.policy`.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from mailwarden.auth.sasl import MECHANISMS, Challenge

__all__ = [
    "Challenge",
    "Failure",
    "MechanismTableError",
    "ScriptMechanism",
    "Success",
    "check_mechanisms",
    "safe_in_clear",
]

# RFC 4422 §3.1: 1 to 20 characters of upper-case letters, digits, hyphen and underscore.
_NAME = re.compile(r"^[A-Z0-9_-]{1,20}$")


@dataclass(frozen=True, slots=True)
class Success:
    """The exchange authenticated ``identity`` (what ``conn.auth.username`` becomes)."""

    identity: str


@dataclass(frozen=True, slots=True)
class Failure:
    """The exchange failed: 535 5.7.8 Authentication credentials invalid."""


StepResult = Challenge | Success | Failure


class ScriptMechanism(Protocol):
    """One exchange of a script's mechanism (one instance per AUTH command)."""

    async def step(self, conn: Any, response: bytes | None) -> StepResult: ...


class MechanismTableError(ValueError):
    """``SASL_MECHANISMS`` does not follow the contract; the text says which entry and why."""


def check_mechanisms(table: object) -> dict[str, type]:
    """The script's table, names upper-cased, after checking every entry against the contract.

    Raises :class:`MechanismTableError` for a table that is not a dict, a name RFC 4422 §3.1
    does not allow or that a built-in mechanism already has, a class that cannot be made with no
    arguments, or a ``step`` that is not ``async def step(self, conn, response)``.
    """
    if not isinstance(table, Mapping):
        raise MechanismTableError(
            f"SASL_MECHANISMS must be a dict of name to class, not {type(table).__name__}"
        )
    checked: dict[str, type] = {}
    for name, factory in table.items():
        if not isinstance(name, str) or not _NAME.match(name.upper()):
            raise MechanismTableError(
                f"SASL_MECHANISMS: {name!r} is not a SASL mechanism name "
                "(RFC 4422 §3.1: 1-20 of A-Z, 0-9, '-', '_')"
            )
        upper = name.upper()
        if upper in MECHANISMS:  # PLAIN, LOGIN, EXTERNAL
            raise MechanismTableError(f"SASL_MECHANISMS: {upper} is built in; choose another name")
        if upper in checked:
            raise MechanismTableError(f"SASL_MECHANISMS: {upper} is declared twice")
        checked[upper] = _check_class(upper, factory)
    return checked


def _check_class(name: str, factory: object) -> type:
    if not inspect.isclass(factory):
        raise MechanismTableError(f"SASL_MECHANISMS[{name!r}] must be a class, not {factory!r}")
    try:
        inspect.signature(factory).bind()
    except TypeError:
        raise MechanismTableError(
            f"SASL_MECHANISMS[{name!r}]: {factory.__name__}() must take no arguments"
            " (one instance is made per AUTH exchange)"
        ) from None
    except ValueError:
        pass  # no signature to read (a builtin base): instantiation will tell
    step = getattr(factory, "step", None)
    if not inspect.iscoroutinefunction(step):
        raise MechanismTableError(
            f"SASL_MECHANISMS[{name!r}]: {factory.__name__} needs"
            " async def step(self, conn, response)"
        )
    required = [
        p
        for p in inspect.signature(step).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    if len(required) != 3:
        raise MechanismTableError(
            f"SASL_MECHANISMS[{name!r}]: {factory.__name__}.step takes {len(required)}"
            " parameters; expected async def step(self, conn, response)"
        )
    if not isinstance(getattr(factory, "safe_in_clear", False), bool):
        raise MechanismTableError(
            f"SASL_MECHANISMS[{name!r}]: {factory.__name__}.safe_in_clear must be True or False"
        )
    return factory


def safe_in_clear(factory: type) -> bool:
    """Whether the mechanism may be offered before TLS (its ``safe_in_clear``, default False)."""
    return bool(getattr(factory, "safe_in_clear", False))
