"""The one exception configuration loading raises."""

from __future__ import annotations


class ConfigError(Exception):
    """The configuration cannot be used; ``problems`` lists every reason found.

    Each problem is one line naming the file, the line (when known), the dotted key and what
    was expected, for example
    ``mailwarden.toml:12: servers[0].limits.recipients: expected an integer >= 1, got 'lots'``.
    ``str(err)`` is all problems, one per line.
    """

    def __init__(self, problems: list[str]) -> None:
        if not problems:
            raise ValueError("ConfigError needs at least one problem")
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))

    def __str__(self) -> str:
        return "\n".join(self.problems)


def dotted(path: tuple[str | int, ...]) -> str:
    """``("servers", 0, "limits")`` → ``servers[0].limits``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def format_problem(
    file: str | None, line: int | None, path: tuple[str | int, ...], text: str
) -> str:
    """One problem line: ``file:line: key: text``, leaving out the parts that are unknown."""
    where = ""
    if file is not None:
        where = f"{file}:{line}: " if line is not None else f"{file}: "
    key = dotted(path)
    return f"{where}{key}: {text}" if key else f"{where}{text}"
