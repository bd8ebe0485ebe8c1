"""Loading an operator's policy script and checking it against the hook contract.

A script is an ordinary Python module. Its hooks are found by exact name, must be ``async def``
and must take exactly the parameters of the contract in :mod:`mailwarden.policy.context`; anything
else is a load error naming the file and line, so a mistake shows at ``mailwarden config check``
or at reload (where the previous script keeps running), not on the first message.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import inspect
import itertools
import sys
import traceback
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

HOOK_PARAMETERS: dict[str, tuple[str, ...]] = {
    "connect": ("conn",),
    "helo": ("conn", "helo"),
    "auth": ("conn", "credentials"),
    "mail_from": ("conn", "tx", "sender"),
    "rcpt_to": ("conn", "tx", "recipient"),
    "data": ("conn", "tx", "message"),
    "vrfy": ("conn", "argument"),
    "disconnect": ("conn",),
}

Hook = Callable[..., Coroutine[Any, Any, Any]]
_module_numbers = itertools.count(1)


class ScriptError(Exception):
    """The script could not be loaded; the message names the file, the line and the problem."""


@dataclass(frozen=True, slots=True)
class PolicyScript:
    """A loaded script: its hooks by name. A script with no file is the built-in default."""

    path: Path | None
    hooks: dict[str, Hook] = field(default_factory=dict)
    module: ModuleType | None = None

    def hook(self, name: str) -> Hook | None:
        return self.hooks.get(name)


DEFAULT_SCRIPT = PolicyScript(None)


class _FreshSourceLoader(importlib.machinery.SourceFileLoader):
    """Compiles the script from its source every time, never through __pycache__.

    The bytecode cache is validated by the source's mtime (whole seconds) and size only: an edit
    that keeps the size and lands in the same second as the cached compile (a deploy tool writing
    the file and sending SIGHUP at once) would silently reload the old code.
    """

    def get_code(self, fullname: str) -> Any:
        return self.source_to_code(self.get_data(self.path), self.path)


def load_script(path: Path) -> PolicyScript:
    """Import ``path`` as a fresh module and collect its hooks.

    Raises ScriptError (never anything else) when the file is missing, does not compile, raises
    while importing, or defines a hook with the wrong shape.
    """
    path = Path(path)
    if not path.is_file():
        raise ScriptError(f"{path}: policy script not found")
    name = f"mailwarden_policy_{next(_module_numbers)}"
    spec = importlib.util.spec_from_file_location(
        name, path, loader=_FreshSourceLoader(name, str(path))
    )
    if spec is None or spec.loader is None:
        raise ScriptError(f"{path}: cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    # Registered while its top level runs, as a normal import is: dataclasses look the module
    # up in sys.modules (a @dataclass under `from __future__ import annotations` fails to load
    # without it). Unregistered right after, so reloads do not pile up modules there.
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as error:
        raise ScriptError(f"{path}:{error.lineno}: syntax error: {error.msg}") from None
    # SystemExit too: a script calling sys.exit() at import time must not stop a reload
    # (or the worker doing it); it is a load error like any other.
    except (Exception, SystemExit) as error:  # the script's own code failed at import time
        line = _line_in(path, error)
        raise ScriptError(
            f"{path}:{line}: import failed: {type(error).__name__}: {error}"
        ) from None
    finally:
        sys.modules.pop(name, None)
    hooks: dict[str, Hook] = {}
    for hook_name, parameters in HOOK_PARAMETERS.items():
        candidate = getattr(module, hook_name, None)
        if candidate is None:
            continue
        hooks[hook_name] = _check_hook(path, hook_name, candidate, parameters)
    return PolicyScript(path, hooks, module)


def _check_hook(path: Path, name: str, candidate: object, parameters: tuple[str, ...]) -> Hook:
    expected = f"async def {name}({', '.join(parameters)})"
    line = getattr(getattr(candidate, "__code__", None), "co_firstlineno", "?")
    if not inspect.iscoroutinefunction(candidate):
        raise ScriptError(f"{path}:{line}: hook {name} must be {expected}")
    signature = inspect.signature(candidate)
    positional = [
        p
        for p in signature.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    if len(positional) != len(parameters) or any(
        p.kind in (p.KEYWORD_ONLY,) and p.default is p.empty for p in signature.parameters.values()
    ):
        raise ScriptError(
            f"{path}:{line}: hook {name} takes {len(positional)} parameters; expected {expected}"
        )
    return candidate  # type: ignore[return-value]


def _line_in(path: Path, error: BaseException) -> int | str:
    for frame in reversed(traceback.extract_tb(error.__traceback__)):
        if Path(frame.filename) == path:
            return frame.lineno or "?"
    return "?"


def drop_module(script: PolicyScript) -> None:
    """Forget a replaced script's module (it stays alive while connections still use it)."""
    if script.module is not None:
        sys.modules.pop(script.module.__name__, None)
