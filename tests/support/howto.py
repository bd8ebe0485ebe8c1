"""Read the how-tos of docs/howto/ as the test suite runs them: fenced blocks with their info
string, and the commands of ``console`` blocks with the output each one shows.

A console block holds commands after a ``$ `` prompt (a line ending in ``\\`` continues on the
next one) and, after each command, the lines of output it shows, trimmed where a line is ``…``.
Other blocks name what they are in their info string: ```` ```toml file=mailwarden.toml ````.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

FENCE = re.compile(r"^```(\S*)(.*)$")


@dataclass(frozen=True)
class Block:
    language: str
    attributes: dict[str, str]
    text: str
    line: int  # 1-based line of the opening fence


@dataclass
class Command:
    text: str  # with the page's placeholders, as shown
    output: list[str] = field(default_factory=list)
    line: int = 0

    @property
    def shown(self) -> str:
        return "\n".join(self.output)


def blocks(path: Path) -> list[Block]:
    """Every fenced block of the page, in order; an unclosed fence is an error."""
    found: list[Block] = []
    lines = path.read_text().splitlines()
    index = 0
    while index < len(lines):
        match = FENCE.match(lines[index])
        if match is None:
            index += 1
            continue
        start = index
        index += 1
        body: list[str] = []
        while index < len(lines) and lines[index] != "```":
            body.append(lines[index])
            index += 1
        if index == len(lines):
            raise ValueError(f"{path}:{start + 1}: fence never closed")
        attributes = dict(part.split("=", 1) for part in match.group(2).split() if "=" in part)
        found.append(Block(match.group(1), attributes, "\n".join(body) + "\n", start + 1))
        index += 1
    return found


def commands(block: Block) -> list[Command]:
    """The commands of a console block with the output shown after each."""
    found: list[Command] = []
    continuing = False
    for offset, line in enumerate(block.text.splitlines(), start=1):
        if continuing:
            found[-1].text += "\n" + line
            continuing = line.endswith("\\")
        elif line.startswith("$ "):
            found.append(Command(line[2:], line=block.line + offset))
            continuing = line.endswith("\\")
        elif found:
            found[-1].output.append(line)
        elif line.strip():
            raise ValueError(f"line {block.line + offset}: output before any command: {line!r}")
    return found


def page_commands(path: Path) -> list[Command]:
    return [
        command
        for block in blocks(path)
        if block.language == "console"
        for command in commands(block)
    ]
