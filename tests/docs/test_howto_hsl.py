"""docs/howto/from-hsl.md: every Python example of the page is real Python, and the blocks run.

The one-line examples of the tables are fragments (they use ``conn``, ``message`` …, and may
``await``), so they are compiled, not run; the fenced blocks are whole modules and are executed,
with the asserts they hold. A name that the library renames breaks the import lines.
"""

from __future__ import annotations

import ast
import builtins
import copy
import importlib
import re
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.howto import Block, blocks

import mailwarden.lib
from mailwarden import stats
from mailwarden.policy import actions, delivery

PAGE = Path(__file__).resolve().parents[2] / "docs" / "howto" / "from-hsl.md"
SPAN = re.compile(r"`([^`]+)`")


def table_examples(path: Path) -> list[tuple[int, str]]:
    """(line, code) of the last column of every table whose header's last cell is ``example``."""
    found: list[tuple[int, str]] = []
    in_example_table = False
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.startswith("|"):
            in_example_table = False
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        if cells[-1] == "example":
            in_example_table = True
        elif in_example_table and not set(cells[-1]) <= {"-", " "}:
            spans = SPAN.findall(cells[-1])
            assert len(spans) == 1, f"{path.name}:{number}: one code span per example: {line}"
            found.append((number, spans[0]))
    return found


EXAMPLES = table_examples(PAGE)
PYTHON = [block for block in blocks(PAGE) if block.language == "python"]


def test_the_page_has_examples() -> None:
    assert len(EXAMPLES) >= 50, EXAMPLES
    assert len(PYTHON) >= 2


# What a fragment may use without defining it: the hooks' parameters, and modules.
CONTEXT = {"conn", "tx", "message", "sender", "recipient", "helo", "attempt", "result"}
HELPERS = {"partner_plan"}  # the function the cache row decorates, defined in library.md
MODULES = {
    name: importlib.import_module(module)
    for name, module in {
        **{
            lib: f"mailwarden.lib.{lib}"
            for lib in mailwarden.lib.__all__
            if isinstance(getattr(mailwarden.lib, lib), types.ModuleType)
        },
        **{std: std for std in ("asyncio", "base64", "hashlib", "hmac", "ipaddress", "json")},
        **{std: std for std in ("logging", "re", "struct", "time", "typing")},
    }.items()
}
NAMES = {
    name: getattr(module, name) for module in (mailwarden.lib, delivery) for name in module.__all__
} | {
    name: getattr(actions, name)
    for name in ("Accept", "Reject", "Defer", "Queue", "Hold", "Discard")
}


@pytest.mark.parametrize(("line", "code"), EXAMPLES, ids=[f"line{n}" for n, _ in EXAMPLES])
def test_table_example_compiles_and_names_what_exists(line: int, code: str) -> None:
    """Compiled as the body of a hook; every name it reads is a hook parameter, something it
    assigns, or a real name of the library, the actions or the standard library, and
    ``module.attribute`` exists."""
    source = "async def hook():\n    " + code
    try:
        tree = ast.parse(source, f"{PAGE.name}:{line}")
        compile(tree, f"{PAGE.name}:{line}", "exec")
    except SyntaxError as error:
        pytest.fail(f"{PAGE.name}:{line}: {code!r} is not Python: {error}")
    assigned = {
        node.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load)
    } | {node.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}
    known = CONTEXT | HELPERS | assigned | set(MODULES) | set(NAMES) | set(dir(builtins))
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            assert node.id in known, f"{PAGE.name}:{line}: {node.id!r} is not defined: {code}"
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in MODULES
        ):
            module = MODULES[node.value.id]
            assert hasattr(module, node.attr), f"{PAGE.name}:{line}: no {node.value.id}.{node.attr}"


@pytest.fixture
def own_counters() -> Iterator[None]:
    """The blocks call stat(): count into a copy, so this process's counters stay as they were."""
    saved = copy.deepcopy(stats.script_counters)
    yield
    stats.script_counters.clear()
    stats.script_counters.update(saved)


@pytest.mark.parametrize("block", PYTHON, ids=[f"line{b.line}" for b in PYTHON])
@pytest.mark.usefixtures("own_counters")
def test_python_block_runs(block: Block) -> None:
    code = compile(block.text, f"{PAGE.name}:{block.line}", "exec")
    namespace: dict[str, object] = {"__name__": "howto_example"}
    exec(code, namespace)
