"""Loading an operator's policy script and checking it against the hook contract.

A script is an ordinary Python module. Its hooks are found by exact name, must be ``async def``
and must take exactly the parameters of the registry in :mod:`mailwarden.policy.hooks`; anything
else is a load error naming the file and line, so a mistake shows at ``mailwarden config check``
or at reload (where the previous script keeps running), not on the first message.
"""

from __future__ import annotations

import builtins
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

from mailwarden.auth.custom import MechanismTableError, check_mechanisms
from mailwarden.policy.hooks import HOOKS, HookSpec

# The parameters of each hook, read from the registry (kept by this name for older imports).
HOOK_PARAMETERS: dict[str, tuple[str, ...]] = {
    name: spec.parameters for name, spec in HOOKS.items()
}

Hook = Callable[..., Coroutine[Any, Any, Any]]
_module_numbers = itertools.count(1)


class ScriptError(Exception):
    """The script could not be loaded; the message names the file, the line and the problem."""


@dataclass(frozen=True, slots=True)
class PolicyScript:
    """A loaded script: its hooks by name and its own SASL mechanisms (``SASL_MECHANISMS``,
    see :mod:`mailwarden.auth.custom`) by upper-case name. A script with no file is the
    built-in default."""

    path: Path | None
    hooks: dict[str, Hook] = field(default_factory=dict)
    module: ModuleType | None = None
    mechanisms: dict[str, type] = field(default_factory=dict)

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


class _ScriptDirectory:
    """The helper modules beside one loaded script, private to that load.

    The script, and every helper it imports, gets its own ``__import__``: an import statement
    whose top-level name is a ``NAME.py`` or ``NAME/__init__.py`` in the script's directory
    loads that file as a module of this load only (compiled from source, as the script is);
    every other name is imported as usual. So a reload loads the helpers afresh with the script,
    two listeners whose scripts sit in different directories never share a same-named helper,
    and nothing is added to ``sys.path`` for the rest of the process (a helper named like a
    library shadows it only for the script's own imports, as the script's directory would on
    ``sys.path``). ``importlib.import_module`` does not go through this: use ``import``.
    """

    def __init__(self, script: Path, prefix: str) -> None:
        self.directory = script.parent
        self.prefix = prefix  # the script's module name; helpers are named prefix.NAME
        self.modules: dict[str, ModuleType] = {}
        self.files: set[Path] = set()  # every helper file run, to name one in load errors
        self.not_local: set[str] = set()  # top-level names found not to be beside the script
        self.script: ModuleType | None = None  # set once the script's module exists
        self.builtins = dict(vars(builtins))
        self.builtins["__import__"] = self._import

    def _import(
        self,
        name: str,
        globals: dict[str, Any] | None = None,
        locals: Any = None,
        fromlist: Any = (),
        level: int = 0,
    ) -> ModuleType:
        dotted = self._local_name(name, globals or {}, level)
        if dotted is None:
            return builtins.__import__(name, globals, locals, fromlist, level)
        if not dotted:  # `from . import helper`: the script's directory is the package
            return self._with_fromlist(None, fromlist, self.script)
        module = self._load(dotted)
        if fromlist:
            return self._with_fromlist(dotted, fromlist, module)
        return self.modules[dotted.partition(".")[0]]

    def _local_name(self, name: str, globals: dict[str, Any], level: int) -> str | None:
        """The name inside this directory that an import means, or None if it is not local."""
        if level == 0:
            top = name.partition(".")[0]
            if top in self.modules:
                return name
            if top in self.not_local:
                return None  # `import json` inside a hook costs no file lookups after the first
            if self._file_for(self.directory, top):
                return name
            self.not_local.add(top)
            return None
        package = globals.get("__package__") or ""
        if package != self.prefix and not package.startswith(self.prefix + "."):
            return None
        parts = package[len(self.prefix) + 1 :].split(".") if package != self.prefix else []
        if level - 1 > len(parts):
            raise ImportError("attempted relative import beyond the script's directory")
        base = parts[: len(parts) - (level - 1)]
        return ".".join([*base, name] if name else base)

    def _with_fromlist(self, dotted: str | None, fromlist: Any, module: Any) -> Any:
        # `from helper_package import submodule`: load submodules named in the fromlist.
        for item in fromlist:
            if item == "*" or (module is not None and hasattr(module, item)):
                continue
            child = f"{dotted}.{item}" if dotted else item
            parent = self.directory if dotted is None else None
            if parent is not None and not self._file_for(parent, item):
                continue
            try:
                loaded = self._load(child)
            except ModuleNotFoundError:
                continue  # the import statement then reports "cannot import name"
            if module is not None and dotted is None:
                setattr(module, item, loaded)  # where the import statement will look for it
        return module

    @staticmethod
    def _file_for(directory: Path, name: str) -> tuple[Path, bool] | None:
        """``(file, is_package)`` for module ``name`` in ``directory``, if there is one."""
        if not name.isidentifier():
            return None
        package = directory / name / "__init__.py"
        if package.is_file():
            return package, True
        plain = directory / f"{name}.py"
        return (plain, False) if plain.is_file() else None

    def _load(self, dotted: str) -> ModuleType:
        if dotted in self.modules:
            return self.modules[dotted]
        parent_name, _, leaf = dotted.rpartition(".")
        parent = self._load(parent_name) if parent_name else None
        search = [Path(p) for p in getattr(parent, "__path__", [])] if parent else [self.directory]
        found = next(filter(None, (self._file_for(d, leaf) for d in search)), None)
        if found is None:
            raise ModuleNotFoundError(
                f"No module named {dotted!r} beside {self.directory}", name=dotted
            )
        path, is_package = found
        fullname = f"{self.prefix}.{dotted}"
        spec = importlib.util.spec_from_file_location(
            fullname,
            path,
            loader=_FreshSourceLoader(fullname, str(path)),
            submodule_search_locations=[str(path.parent)] if is_package else None,
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        module.__dict__["__builtins__"] = self.builtins
        self.modules[dotted] = module  # before it runs, so that circular imports find it
        self.files.add(path)
        sys.modules[fullname] = module  # while it runs, for dataclasses (see load_script)
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del self.modules[dotted]
            raise
        finally:
            sys.modules.pop(fullname, None)
        if parent is not None:
            setattr(parent, leaf, module)
        return module


def load_script(path: Path) -> PolicyScript:
    """Import ``path`` as a fresh module and collect its hooks.

    Modules beside the script are importable by it, loaded afresh with each load (see
    :class:`_ScriptDirectory`). Raises ScriptError (never anything else) when the file is
    missing, the script or a helper does not compile or raises while importing, or a hook has
    the wrong shape; the message names the file and line where it went wrong.
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
    helpers = _ScriptDirectory(path, name)
    helpers.script = module
    module.__dict__["__builtins__"] = helpers.builtins
    module.__package__ = name  # `from . import helper` resolves inside the script's directory
    # Registered while its top level runs, as a normal import is: dataclasses look the module
    # up in sys.modules (a @dataclass under `from __future__ import annotations` fails to load
    # without it). Unregistered right after, so reloads do not pile up modules there.
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as error:
        where = Path(error.filename) if error.filename else path
        raise ScriptError(
            f"{where}:{error.lineno}: syntax error: {error.msg}{_imported_by(path, where, error)}"
        ) from None
    # SystemExit too: a script calling sys.exit() at import time must not stop a reload
    # (or the worker doing it); it is a load error like any other.
    except (Exception, SystemExit) as error:  # the script's own code failed at import time
        where, line = _origin(path, helpers.files, error)
        raise ScriptError(
            f"{where}:{line}: import failed: {type(error).__name__}: {error}"
            + _imported_by(path, where, error)
        ) from None
    finally:
        sys.modules.pop(name, None)
    hooks: dict[str, Hook] = {}
    for hook_name, spec in HOOKS.items():
        candidate = getattr(module, hook_name, None)
        if candidate is None:
            continue
        hooks[hook_name] = _check_hook(path, spec, candidate)
    mechanisms: dict[str, type] = {}
    table = getattr(module, "SASL_MECHANISMS", None)
    if table is not None:
        try:
            mechanisms = check_mechanisms(table)
        except MechanismTableError as error:
            raise ScriptError(
                f"{path}:{_assignment_line(path, 'SASL_MECHANISMS')}: {error}"
            ) from None
    return PolicyScript(path, hooks, module, mechanisms)


def _assignment_line(path: Path, name: str) -> int | str:
    """The line where the script assigns ``name`` at top level ("?" when not found)."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return "?"
    for number, line in enumerate(lines, 1):
        if line.startswith(name) and line[len(name) :].lstrip().startswith(("=", ":")):
            return number
    return "?"


def _check_hook(path: Path, spec: HookSpec, candidate: object) -> Hook:
    name, parameters, expected = spec.name, spec.parameters, spec.signature
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


def _origin(path: Path, helpers: set[Path], error: BaseException) -> tuple[Path, int | str]:
    """The innermost line of the script or of one of its helpers that the error went through
    (a library's own frames name nothing the operator can edit)."""
    ours = {path, *helpers}
    for frame in reversed(traceback.extract_tb(error.__traceback__)):
        if Path(frame.filename) in ours:
            return Path(frame.filename), frame.lineno or "?"
    return path, "?"


def _imported_by(path: Path, where: Path, error: BaseException) -> str:
    """`` (imported by script:line)`` when the error lies in a helper, not in the script."""
    if where == path:
        return ""
    return f" (imported by {path}:{_line_in(path, error)})"


def drop_module(script: PolicyScript) -> None:
    """Forget a replaced script's module (it stays alive while connections still use it)."""
    if script.module is not None:
        sys.modules.pop(script.module.__name__, None)
