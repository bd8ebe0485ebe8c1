"""``auth/`` (SASL) imports nothing from ``policy/``: policy wraps what SASL produces."""

from __future__ import annotations

import ast
from pathlib import Path

import mailwarden
from mailwarden.auth import sasl
from mailwarden.policy import context

SOURCE = Path(mailwarden.__file__).resolve().parent


def _module_file(name: str) -> Path | None:
    parts = name.split(".")[1:]
    base = SOURCE.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _mailwarden_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("mailwarden"))
        elif (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.level == 0
            and node.module.startswith("mailwarden")
        ):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def test_auth_imports_nothing_from_policy_even_indirectly() -> None:
    seen: set[str] = set()
    todo = [f"mailwarden.auth.{p.stem}" for p in (SOURCE / "auth").glob("*.py")]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = _module_file(name)
        if path is not None:
            todo.extend(_mailwarden_imports(path))
    reached = sorted(name for name in seen if _module_file(name) is not None)
    assert [name for name in reached if name.startswith("mailwarden.policy")] == []
    assert "mailwarden.auth.sasl" in reached


def test_scripts_keep_importing_credentials_from_the_policy_contexts() -> None:
    assert context.Credentials is sasl.Credentials
    step = sasl.mechanism_for("plain").step(b"\x00alice\x00secret")
    assert isinstance(step, context.Credentials)
    assert (step.mechanism, step.username, step.password, step.authzid) == (
        "PLAIN",
        "alice",
        "secret",
        "",
    )
