"""The header section of a message, editable by the data hook (RFC 5322 §2.2 and §3.6).

Fields keep their raw bytes so that headers the script does not touch go to the spool exactly as
received (DKIM signatures stay valid). Edited and added fields are written as ``Name: value``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from email.header import decode_header, make_header

_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+")  # RFC 5322 §3.6.8 ftext


class Headers:
    """An ordered list of header fields. Names compare case-insensitively."""

    __slots__ = ("_fields", "modified")

    def __init__(self, fields: list[tuple[str, bytes]]) -> None:
        self._fields = fields  # (name, raw field bytes including name, colon and final CRLF)
        self.modified = False

    @classmethod
    def parse(cls, block: bytes) -> Headers:
        """Split a header block (up to, not including, the blank line). Never raises: a line
        that is neither a field nor a continuation is kept as an unnamed field."""
        fields: list[tuple[str, bytes]] = []
        for line in block.splitlines(keepends=True):
            if line[:1] in (b" ", b"\t") and fields:
                name, raw = fields[-1]
                fields[-1] = (name, raw + line)
                continue
            name, colon, _ = line.partition(b":")
            fields.append((name.strip().decode("latin-1") if colon else "", line))
        return cls(fields)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for name, raw in self._fields:
            if name:
                yield name, _value_of(raw)

    def __len__(self) -> int:
        return len(self._fields)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and any(n.lower() == name.lower() for n, _ in self._fields)

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first field called ``name``, unfolded, RFC 2047 words decoded; else ``default``."""
        for value in self.get_all(name):
            return value
        return default

    def get_all(self, name: str) -> list[str]:
        lname = name.lower()
        return [_value_of(raw) for n, raw in self._fields if n.lower() == lname]

    def add(self, name: str, value: str, *, at_top: bool = True) -> None:
        """Add a field; at the top by default, where trace and stamp fields belong (RFC 5321 §4.4).

        Raises ValueError for a bad name or a value with CR/LF (no header injection)."""
        field = (name, _encode_field(name, value))
        if at_top:
            self._fields.insert(0, field)
        else:
            self._fields.append(field)
        self.modified = True

    def add_folded(self, field: bytes, *, at_top: bool = True) -> None:
        """Add a whole field already folded by its author, byte for byte, at the top (or the
        end, where a MIME part's content fields go, with ``at_top=False``): for
        signatures (DKIM, ARC) whose ``simple`` canonicalisation (RFC 6376 §3.4.1) a refold
        would break. Raises ValueError unless ``field`` is one field: ``Name:`` and lines that
        each continue with a space or tab (RFC 5322 §2.2.3), ending in CRLF."""
        if not field.endswith(b"\r\n"):
            field += b"\r\n"
        name, colon, rest = field.partition(b":")
        text_name = name.decode("ascii", "replace")
        if not colon or not _FIELD_NAME.fullmatch(text_name):
            raise ValueError(f"invalid header field name {text_name!r}")
        lines = rest[:-2].split(b"\r\n")
        if any(b"\r" in line or b"\n" in line for line in lines) or any(
            line[:1] not in (b" ", b"\t") for line in lines[1:]
        ):
            raise ValueError("a folded field continues each line with a space or tab")
        if at_top:
            self._fields.insert(0, (text_name, field))
        else:
            self._fields.append((text_name, field))
        self.modified = True

    def set(self, name: str, value: str) -> None:
        """Replace the first ``name`` field in place and delete the others; add it if absent."""
        lname = name.lower()
        encoded = _encode_field(name, value)
        for index, (n, _) in enumerate(self._fields):
            if n.lower() == lname:
                self._fields[index] = (name, encoded)
                self._fields[index + 1 :] = [
                    f for f in self._fields[index + 1 :] if f[0].lower() != lname
                ]
                self.modified = True
                return
        self.add(name, value, at_top=False)

    def delete(self, name: str) -> int:
        """Delete every ``name`` field; returns how many there were."""
        lname = name.lower()
        before = len(self._fields)
        self._fields = [f for f in self._fields if f[0].lower() != lname]
        removed = before - len(self._fields)
        self.modified = self.modified or bool(removed)
        return removed

    def delete_if(self, name: str, predicate: Callable[[str], bool]) -> int:
        """Delete the ``name`` fields whose value (as :meth:`get_all` gives it) ``predicate``
        holds for, keeping the others in place; returns how many were deleted."""
        lname = name.lower()
        before = len(self._fields)
        self._fields = [
            f for f in self._fields if f[0].lower() != lname or not predicate(_value_of(f[1]))
        ]
        removed = before - len(self._fields)
        self.modified = self.modified or bool(removed)
        return removed

    def copy(self) -> Headers:
        """An independent copy (the fields' raw bytes shared, they are immutable)."""
        return Headers(list(self._fields))

    def to_bytes(self) -> bytes:
        return b"".join(raw for _, raw in self._fields)


def _encode_field(name: str, value: str) -> bytes:
    if not _FIELD_NAME.fullmatch(name):
        raise ValueError(f"invalid header field name {name!r}")
    if "\r" in value or "\n" in value:
        raise ValueError("header value must not contain CR or LF")
    return f"{name}: {value}\r\n".encode()


def _value_of(raw: bytes) -> str:
    _, _, value = raw.partition(b":")
    text = value.decode("utf-8", "replace")
    unfolded = re.sub(r"\r?\n(?=[ \t])", "", text).strip()
    if "=?" not in unfolded:
        return unfolded
    try:
        return str(make_header(decode_header(unfolded)))
    except (ValueError, LookupError):
        return unfolded
