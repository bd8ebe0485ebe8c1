"""The reader of the how-tos (tests/support/howto.py) finds exactly the commands and outputs a
page shows, whatever they hold: a property test over generated console blocks, and the cases
that must be refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.support.howto import blocks, commands, page_commands

# Lines that are neither a prompt nor a fence; commands without a trailing backslash.
TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), max_size=30)
OUTPUT_LINE = TEXT.filter(lambda line: not line.startswith(("$ ", "```")))
COMMAND = TEXT.filter(lambda line: not line.endswith("\\") and line.strip() != "")
STEP = st.tuples(COMMAND, st.lists(OUTPUT_LINE, max_size=4))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "page.md"
    path.write_text(text)
    return path


@given(steps=st.lists(STEP, min_size=1, max_size=6), prose=OUTPUT_LINE)
def test_console_blocks_give_back_every_command_and_its_output(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[str, list[str]]], prose: str
) -> None:
    body = "".join(f"$ {command}\n" + "".join(f"{o}\n" for o in out) for command, out in steps)
    text = f"# Title\n\n{prose}\n\n```console\n{body}```\n\n```toml file=x.toml\na = 1\n```\n"
    path = write(tmp_path_factory.mktemp("page"), text)
    found = page_commands(path)
    assert [(c.text, c.output) for c in found] == [(c, out) for c, out in steps]
    toml = [b for b in blocks(path) if b.language == "toml"]
    assert toml[0].attributes == {"file": "x.toml"} and toml[0].text == "a = 1\n"


def test_a_backslash_continues_a_command(tmp_path: Path) -> None:
    path = write(tmp_path, "```console\n$ echo a \\\n  b\na b\n```\n")
    (command,) = page_commands(path)
    assert (command.text, command.output, command.line) == ("echo a \\\n  b", ["a b"], 2)


def test_an_unclosed_fence_and_output_without_a_command_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="never closed"):
        blocks(write(tmp_path, "```console\n$ true\n"))
    (block,) = blocks(write(tmp_path, "```console\nstray\n$ true\n```\n"))
    with pytest.raises(ValueError, match="output before any command"):
        commands(block)
