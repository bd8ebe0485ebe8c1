"""Where each key of a TOML document sits: a map from key paths to line numbers.

``tomllib`` gives values but no positions, so this scanner walks the (already parsed, hence
valid) text once and records the line of every table header, key and array element. Paths use
the same shape as pydantic error locations: ``("servers", 1, "limits", "recipients")``.
Arrays of tables (``[[servers]]``) count their occurrences, so the second one is index 1.
"""

from __future__ import annotations

import contextlib
import tomllib
from collections.abc import Iterator

KeyPath = tuple[str | int, ...]

_BARE_KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def key_lines(text: str) -> dict[KeyPath, int]:
    """Map every key path in ``text`` to its 1-based line number.

    The first occurrence wins (a table's header, or the first dotted key that creates it).
    Meant for text ``tomllib`` accepted; on anything it does not understand it stops and
    returns what it found so far rather than raising.
    """
    scanner = _Scanner(text)
    with contextlib.suppress(IndexError, ValueError, tomllib.TOMLDecodeError):
        scanner.document()
    return scanner.lines


def line_of(lines: dict[KeyPath, int], path: KeyPath) -> int | None:
    """The line of ``path``, or of its nearest enclosing key or table; None if none is known."""
    for end in range(len(path), 0, -1):
        line = lines.get(path[:end])
        if line is not None:
            return line
    return None


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line = 1
        self.lines: dict[KeyPath, int] = {}
        self._aot_index: dict[KeyPath, int] = {}  # array-of-tables path -> current index

    # -- characters -------------------------------------------------------------------------

    def _peek(self, n: int = 1) -> str:
        return self.text[self.pos : self.pos + n]

    def _advance(self, n: int = 1) -> None:
        chunk = self.text[self.pos : self.pos + n]
        self.line += chunk.count("\n")
        self.pos += n

    def _skip_blank(self, newlines: bool) -> None:
        """Skip spaces, tabs and comments, and newlines too when ``newlines``."""
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char in " \t\r" or (newlines and char == "\n"):
                self._advance()
            elif char == "#":
                end = self.text.find("\n", self.pos)
                self._advance((len(self.text) if end < 0 else end) - self.pos)
            else:
                return

    def _record(self, path: KeyPath) -> None:
        for end in range(1, len(path) + 1):
            self.lines.setdefault(path[:end], self.line)

    # -- structure --------------------------------------------------------------------------

    def document(self) -> None:
        table: KeyPath = ()
        while True:
            self._skip_blank(newlines=True)
            if self.pos >= len(self.text):
                return
            if self._peek(2) == "[[":
                self._advance(2)
                parts = self._key()
                self._expect("]]")
                parent = self._resolve(parts[:-1])
                array = (*parent, parts[-1])
                index = self._aot_index.get(array, -1) + 1
                self._aot_index[array] = index
                # Tables nested under the previous element belong to it, not to this one.
                for stale in [
                    p for p in self._aot_index if p[: len(array)] == array and p != array
                ]:
                    del self._aot_index[stale]
                table = (*array, index)
                self._record(table)
            elif self._peek() == "[":
                self._advance()
                parts = self._key()
                self._expect("]")
                table = self._resolve(parts)
                self._record(table)
            else:
                path = (*table, *self._key())
                self._record(path)
                self._expect("=")
                self._value(path)

    def _resolve(self, parts: tuple[str, ...]) -> KeyPath:
        """Insert the current index after each array of tables on the way to ``parts``."""
        out: list[str | int] = []
        for part in parts:
            out.append(part)
            index = self._aot_index.get(tuple(out))
            if index is not None:
                out.append(index)
        return tuple(out)

    def _expect(self, token: str) -> None:
        self._skip_blank(newlines=False)
        if self._peek(len(token)) != token:
            raise ValueError(f"expected {token!r} at line {self.line}")
        self._advance(len(token))

    def _key(self) -> tuple[str, ...]:
        parts = []
        while True:
            self._skip_blank(newlines=False)
            parts.append(self._simple_key())
            self._skip_blank(newlines=False)
            if self._peek() != ".":
                return tuple(parts)
            self._advance()

    def _simple_key(self) -> str:
        char = self._peek()
        if char in "\"'":
            start = self.pos
            self._string()
            return tomllib.loads("k = " + self.text[start : self.pos])["k"]
        start = self.pos
        while self._peek() and self._peek() in _BARE_KEY_CHARS:
            self._advance()
        if self.pos == start:
            raise ValueError(f"expected a key at line {self.line}")
        return self.text[start : self.pos]

    def _string(self) -> None:
        quote = self._peek()
        if self._peek(3) == quote * 3:
            self._advance(3)
            while True:
                if quote == '"' and self._peek() == "\\":
                    self._advance(2)
                elif self._peek(3) == quote * 3:
                    # Up to two more quotes may close the string ("""a"""" is 'a"').
                    self._advance(3)
                    while self._peek() == quote:
                        self._advance()
                    return
                elif not self._peek():
                    raise ValueError("unterminated string")
                else:
                    self._advance()
        self._advance()
        while True:
            char = self._peek()
            if not char or char == "\n":
                raise ValueError("unterminated string")
            if quote == '"' and char == "\\":
                self._advance(2)
                continue
            self._advance()
            if char == quote:
                return

    def _value(self, path: KeyPath) -> None:
        self._skip_blank(newlines=False)
        char = self._peek()
        if char in "\"'":
            self._string()
        elif char == "[":
            self._advance()
            for index in self._elements("]"):
                self._record((*path, index))
                self._value((*path, index))
        elif char == "{":
            self._advance()
            for _ in self._elements("}"):
                key = (*path, *self._key())
                self._record(key)
                self._expect("=")
                self._value(key)
        else:
            while self._peek() and self._peek() not in ",]}#\n":
                self._advance()

    def _elements(self, closing: str) -> Iterator[int]:
        """Yield an index per element of an array or inline table, then eat ``closing``."""
        index = 0
        while True:
            self._skip_blank(newlines=True)
            if self._peek() == closing:
                self._advance()
                return
            yield index
            index += 1
            self._skip_blank(newlines=True)
            if self._peek() == ",":
                self._advance()
