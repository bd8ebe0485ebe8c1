"""The hook registry is the one list of hooks: the loader, the runner and the docs follow it."""

from __future__ import annotations

import ast
import asyncio
import re
from pathlib import Path

import pytest

import mailwarden
from mailwarden.policy import hooks
from mailwarden.policy.actions import Hold
from mailwarden.policy.hooks import HOOKS, Stage
from mailwarden.policy.runner import HookFailed, call_hook
from mailwarden.policy.script import PolicyScript, load_script
from mailwarden.smtp import replies

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "policy.md"
SOURCE = Path(mailwarden.__file__).resolve().parent


def _table_after(heading: str) -> list[list[str]]:
    """The rows (cells stripped) of the first Markdown table after ``heading``."""
    text = DOCS.read_text()
    start = text.index(heading)
    rows: list[list[str]] = []
    for line in text[start:].splitlines()[1:]:
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif rows:
            break
    return rows[2:]  # without the header and the --- line


def _documented_returns(spec: hooks.HookSpec) -> str:
    if spec.ignores_result:
        return "anything (ignored)"
    return ", ".join([*(f"`{t.__name__}`" for t in spec.allowed), "`None`"])


def test_docs_hook_table_is_the_registry() -> None:
    rows = _table_after("## The hook contract")
    expected = [
        [f"`{s.name}`", f"`{s.signature}`", s.runs, _documented_returns(s)]
        for s in HOOKS.values()
        if s.stage is Stage.SESSION
    ]
    assert rows == expected


def test_docs_delivery_hook_table_is_the_registry() -> None:
    rows = _table_after("## Delivery hooks")
    expected = [
        [f"`{s.name}`", f"`{s.signature}`", s.runs, _documented_returns(s)]
        for s in HOOKS.values()
        if s.stage is Stage.DELIVERY
    ]
    assert rows == expected


def test_docs_script_error_column_is_each_hooks_failure_reply() -> None:
    rows = {row[0]: row[3] for row in _table_after("### What the client sees")}
    for spec in HOOKS.values():
        if spec.failure is None:
            assert spec.name not in rows
            continue
        documented = rows[spec.name]
        assert documented.startswith(f"`{spec.failure.code} {spec.failure.enhanced}"), spec.name
    # The generic text, named once under the table, is the catalogue's.
    assert f"The `451 4.3.0` text is `{replies.SCRIPT_ERROR.text}`" in DOCS.read_text()


def test_every_failure_reply_is_a_catalogue_entry() -> None:
    catalogue = set(replies.catalogue().values())
    for spec in HOOKS.values():
        assert spec.failure is None or spec.failure in catalogue, spec.name
        assert spec.failure is None or spec.failure.is_transient, spec.name


def test_loader_accepts_exactly_the_registry_hooks(tmp_path: Path) -> None:
    script = tmp_path / "all.py"
    script.write_text(
        "".join(
            f"async def {name}({', '.join(spec.parameters)}):\n    return None\n\n"
            for name, spec in HOOKS.items()
        )
        + "async def not_a_hook(conn):\n    return None\n"
    )
    assert list(load_script(script).hooks) == list(HOOKS)


def test_runner_refuses_what_the_registry_does_not_allow() -> None:
    async def rcpt_to(conn: object, tx: object, recipient: object) -> Hold:
        return Hold()

    async def data(conn: object, tx: object, message: object) -> Hold:
        return Hold()

    script = PolicyScript(None, {"rcpt_to": rcpt_to, "data": data})
    assert Hold not in HOOKS["rcpt_to"].allowed and Hold in HOOKS["data"].allowed
    with pytest.raises(HookFailed):
        asyncio.run(call_hook(script, "rcpt_to", "c1", None, None, None, None))
    assert isinstance(asyncio.run(call_hook(script, "data", "c1", None, None, None, None)), Hold)


def _hook_names_in(node: ast.AST) -> list[str]:
    """The hook names a literal tuple, list, set or dict (its keys) spells out."""
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        items: list[ast.expr | None] = list(node.elts)
    elif isinstance(node, ast.Dict):
        items = list(node.keys)
    else:
        return []
    return [i.value for i in items if isinstance(i, ast.Constant) and i.value in HOOKS]


def test_no_other_module_lists_the_hooks() -> None:
    # Only the registry lists the hooks (a table of two or more of them: parameters, allowed
    # actions, replies, counters); everyone else reads it. The session calls hooks by spec.
    offenders = []
    for path in sorted((SOURCE / "policy").glob("*.py")) + sorted((SOURCE / "smtp").glob("*.py")):
        # client.py is the outbound machine: its "helo", "data" are commands it sends, not hooks.
        if path.name in ("hooks.py", "client.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if len(_hook_names_in(node)) >= 2:
                offenders.append(f"{path.name}:{getattr(node, 'lineno', '?')}")
    assert offenders == []
    session = (SOURCE / "smtp" / "session.py").read_text()
    assert not re.search(r"_hook\(\s*\"", session), "the session names a hook by string"


def test_delivery_hooks_are_delivery_stage_entries_without_a_client_reply() -> None:
    delivery = {name for name, spec in HOOKS.items() if spec.stage is Stage.DELIVERY}
    assert delivery == {"pre_delivery", "post_delivery"}
    for name in delivery:
        assert HOOKS[name].failure is None  # no client waits: delivery decides what it means
        assert {action.__name__ for action in HOOKS[name].allowed} == {
            "Retry",
            "Hold",
            "Bounce",
            "Delete",
        }
    assert hooks.DISCONNECT.failure is None and hooks.DISCONNECT.ignores_result
