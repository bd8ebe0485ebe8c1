"""A script imports helper modules that sit beside it: loaded afresh with each load (so a reload
picks up an edited helper), private to that load (two scripts' same-named helpers never meet),
and a helper's load error names the helper's file and line."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest

from mailwarden.policy.actions import Accept
from mailwarden.policy.context import Connection, Sender, Transaction
from mailwarden.policy.runner import call_hook
from mailwarden.policy.script import PolicyScript, ScriptError, load_script

SCRIPT = """
import rules
from rules import describe


async def mail_from(conn, tx, sender):
    return Accept(text=describe(sender.address) + " " + rules.VERSION)
"""


def write(directory: Path, name: str, source: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source).lstrip("\n"))
    return path


def rules(version: str) -> str:
    return f"""
        from __future__ import annotations

        from dataclasses import dataclass


        @dataclass(frozen=True)
        class Rule:
            version: str


        VERSION = Rule("{version}").version


        def describe(address):
            return "rules for " + address
        """


def script_in(directory: Path, helper_version: str) -> Path:
    write(directory, "rules.py", rules(helper_version))
    return write(directory, "policy.py", "from mailwarden.policy.actions import Accept\n" + SCRIPT)


def sender() -> Sender:
    return Sender("a@example.org", {})


def load_error(path: Path) -> str:
    with pytest.raises(ScriptError) as caught:
        load_script(path)
    return str(caught.value)


async def test_script_imports_a_helper_beside_it(tmp_path: Path) -> None:
    script = load_script(script_in(tmp_path, "v1"))
    assert await hook_text(script) == "rules for a@example.org v1"


async def test_reload_after_editing_the_helper_uses_the_new_helper(tmp_path: Path) -> None:
    path = script_in(tmp_path, "v1")
    helper = tmp_path / "rules.py"
    first = load_script(path)
    before = helper.stat()
    # Same size, same mtime: no bytecode cache may hand back the old helper.
    write(tmp_path, "rules.py", rules("v2"))
    os.utime(helper, ns=(before.st_atime_ns, before.st_mtime_ns))
    second = load_script(path)
    assert await hook_text(second) == "rules for a@example.org v2"
    assert await hook_text(first) == "rules for a@example.org v1"  # the old load keeps its own
    assert not list(tmp_path.rglob("__pycache__"))


async def test_same_named_helpers_of_two_scripts_do_not_collide(tmp_path: Path) -> None:
    first = load_script(script_in(tmp_path / "inbound", "inbound"))
    second = load_script(script_in(tmp_path / "submission", "submission"))
    assert await hook_text(first) == "rules for a@example.org inbound"
    assert await hook_text(second) == "rules for a@example.org submission"


def test_helpers_stay_out_of_sys_modules_and_sys_path(tmp_path: Path) -> None:
    load_script(script_in(tmp_path, "v1"))
    assert "rules" not in sys.modules
    assert not [m for m in sys.modules if m.endswith(".rules")]
    assert str(tmp_path) not in sys.path


async def test_helper_package_relative_imports_and_import_inside_a_hook(tmp_path: Path) -> None:
    write(tmp_path, "lists/__init__.py", "from .domains import BLOCKED\n")
    write(tmp_path, "lists/domains.py", "from . import names\n\nBLOCKED = names.ALL\n")
    write(tmp_path, "lists/names.py", 'ALL = {"spam.example"}\n')
    write(tmp_path, "late.py", 'WORD = "late"\n')
    write(
        tmp_path,
        "only_in_hook.py",
        "from dataclasses import dataclass\n\n@dataclass\nclass W:\n    w: str\n",
    )
    path = write(
        tmp_path,
        "policy.py",
        """
        from mailwarden.policy.actions import Accept
        from lists import BLOCKED
        from lists import names
        from . import late as same_late


        async def mail_from(conn, tx, sender):
            import late  # already loaded: the same module
            import only_in_hook  # first imported while the hook runs, not at load

            assert late is same_late
            words = [*sorted(BLOCKED), *sorted(names.ALL), late.WORD, only_in_hook.W("hook").w]
            return Accept(text=" ".join(words))
        """,
    )
    script = load_script(path)
    assert "only_in_hook" not in vars(script.module)
    assert await hook_text(script) == "spam.example spam.example late hook"


def test_helper_failing_at_import_names_the_helper_file_and_line(tmp_path: Path) -> None:
    helper = write(tmp_path, "rules.py", 'LIMITS = {"a": 1}\n\nDEFAULT = LIMITS["b"]\n')
    path = write(tmp_path, "policy.py", "# policy\nimport rules\n")
    assert load_error(path) == (f"{helper}:3: import failed: KeyError: 'b' (imported by {path}:2)")


def test_helper_syntax_error_names_the_helper_file_and_line(tmp_path: Path) -> None:
    helper = write(tmp_path, "rules.py", "VERSION = 1\n\ndef describe(address)\n    return 1\n")
    path = write(tmp_path, "policy.py", "from rules import describe\n")
    message = load_error(path)
    assert message.startswith(f"{helper}:3: syntax error: ")
    assert message.endswith(f" (imported by {path}:1)")


def test_error_deep_in_a_helper_package_names_the_innermost_helper_line(tmp_path: Path) -> None:
    inner = write(
        tmp_path, "lists/inner.py", "import ipaddress\n\nNET = ipaddress.ip_network('x')\n"
    )
    write(tmp_path, "lists/__init__.py", "from . import inner\n")
    path = write(tmp_path, "policy.py", "# policy\n\nimport lists\n")
    message = load_error(path)
    assert message.startswith(f"{inner}:3: import failed: ValueError: ")
    assert message.endswith(f" (imported by {path}:3)")


def test_missing_helper_names_the_script_line(tmp_path: Path) -> None:
    path = write(tmp_path, "policy.py", "import os\nimport rulez\n")
    assert load_error(path) == (
        f"{path}:2: import failed: ModuleNotFoundError: No module named 'rulez'"
    )


def test_a_failed_load_leaves_no_half_loaded_helper(tmp_path: Path) -> None:
    write(tmp_path, "rules.py", "raise RuntimeError('not yet')\n")
    path = write(tmp_path, "policy.py", "import rules\n")
    assert "RuntimeError: not yet" in load_error(path)
    write(tmp_path, "rules.py", "VERSION = 'fixed'\n")
    assert load_script(path).module.rules.VERSION == "fixed"  # type: ignore[union-attr]


async def hook_text(script: PolicyScript) -> str:
    conn = Connection("c1", "inbound", "203.0.113.5", 40000, "192.0.2.1", 25)
    action = await call_hook(script, "mail_from", "c1", 5.0, conn, Transaction("t"), sender())
    assert isinstance(action, Accept)
    assert action.text is not None
    return action.text
