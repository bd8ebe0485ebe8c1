"""The MIME structure of a message body by byte offsets (RFC 2045, RFC 2046 §5.1), for editing.

The tree points into the body's octets (bytes in memory, or an mmap of the spool file) rather
than copying them: an entity nobody edits is written back as the very octets it was received
as, and a large body costs no heap. Editing marks an entity and its ancestors ``dirty``; only
dirty entities are re-assembled (their own header fields, through :class:`Headers`, still keep
their raw bytes when untouched).

Parts are numbered as :mod:`mailwarden.lib.dlp` numbers them (IMAP, RFC 3501 §6.4.5), so a
part found by ``dlp.scan`` can be handed to the message's editing methods.

Parsing never raises for what a client sent: a multipart whose boundary is missing or never
seen, or one nested deeper than ``MAX_DEPTH``, is a leaf (its octets are kept, not walked).
"""

from __future__ import annotations

import mmap
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message as EmailMessage
from typing import Literal

from mailwarden.policy.headers import Headers

MAX_DEPTH = 16  # nesting of multiparts and messages walked; deeper is kept as one leaf
MAX_PARTS = 1000
MAX_PART_HEADER = 1024 * 1024  # a part's header fields, as the session caps the message's
_COPY_CHUNK = 1024 * 1024  # untouched octets are copied out of the source this much at a time
# RFC 2046 §5.1: multipart and message/rfc822 entities take no encoding but the identities.
_IDENTITY = frozenset({"", "7bit", "8bit", "binary"})

Source = bytes | mmap.mmap  # a body in memory, or the spool file mapped read-only
Kind = Literal["leaf", "multipart", "message"]


@dataclass(eq=False)
class Entity:
    """One MIME entity: ``source[start:header_end]`` its header fields, ``source[body_start:end]``
    its body. The top-level entity (the message body) has no header octets here: its fields are
    the message's own ``headers``."""

    start: int
    body_start: int
    end: int
    headers: Headers
    kind: Kind = "leaf"
    top: bool = False
    parent: Entity | None = None
    content_type: str = "text/plain"
    boundary: bytes | None = None
    # multipart: each child with the offset where its delimiter line (and the CRLF before it,
    # which belongs to the delimiter, RFC 2046 §5.1.1) starts; the close delimiter and epilogue
    # are source[closing_start:end].
    children: list[tuple[int, Entity]] = field(default_factory=list)
    closing_start: int = 0
    inner: Entity | None = None  # message/rfc822: the enclosed message
    has_separator: bool = True  # a blank line ended the header fields
    dirty: bool = False
    new_body: bytes | None = None  # an edited leaf's encoded body

    # --- facts a script sees --------------------------------------------------------------

    def param(self, name: str) -> str | None:
        return content_params(self.headers).get(name)

    @property
    def transfer_encoding(self) -> str:
        return (self.headers.get("Content-Transfer-Encoding") or "7bit").strip().lower()

    @property
    def disposition(self) -> str | None:
        value = self.headers.get("Content-Disposition")
        return value.split(";", 1)[0].strip().lower() or None if value else None

    @property
    def filename(self) -> str | None:
        parsed = EmailMessage()
        for name in ("Content-Disposition", "Content-Type"):
            value = self.headers.get(name)
            if value is not None:
                parsed[name] = value
        try:
            found = parsed.get_filename()
        except Exception:  # an RFC 2231 value the stdlib cannot take: no usable name
            return None
        return str(found) if found is not None else None

    def body(self, source: Source) -> bytes:
        """The body octets as they stand (edited or received), still transfer-encoded."""
        if self.new_body is not None:
            return self.new_body
        return bytes(source[self.body_start : self.end])

    def editable_headers(self) -> Headers:
        """The fields, ready for fields to be added: fields that ran into the next delimiter
        (no blank line; the CRLF before a delimiter is the delimiter's) get their line end."""
        raw = self.headers.to_bytes()
        # The top entity's fields are the message's own object (every field ends in CRLF).
        if not self.top and raw and not raw.endswith(b"\r\n"):
            self.headers = Headers.parse(raw + b"\r\n")
        return self.headers

    def _head(self) -> bytes:
        """The header fields and the blank line, as written for a dirty entity."""
        if self.has_separator or self.new_body is not None:
            return self.editable_headers().to_bytes() + b"\r\n"
        return self.headers.to_bytes()

    def mark_dirty(self) -> None:
        node: Entity | None = self
        while node is not None and not node.dirty:
            node.dirty = True
            node = node.parent

    def boundaries(self) -> list[bytes]:
        """The boundaries of every multipart enclosing this entity (its body must not hold them)."""
        found = []
        node = self.parent
        while node is not None:
            if node.boundary is not None:
                found.append(node.boundary)
            node = node.parent
        return found


def content_params(headers: Headers) -> dict[str, str]:
    """Content-Type's parameters, names lower-cased, RFC 2231 values decoded."""
    value = headers.get("Content-Type")
    if value is None:
        return {}
    parsed = EmailMessage()
    parsed["Content-Type"] = value
    params: dict[str, str] = {}
    for name, raw in parsed.get_params(failobj=[])[1:]:
        try:
            text = raw if isinstance(raw, str) else str(raw[2])
        except (IndexError, TypeError):
            continue
        params[name.lower()] = text
    return params


def content_type_of(headers: Headers, default: str) -> str:
    value = headers.get("Content-Type")
    if value is None:
        return default
    parsed = EmailMessage()
    parsed["Content-Type"] = value
    ctype = parsed.get_content_type()
    # The stdlib reads a malformed type as text/plain (RFC 2045 §5.2), which is the rule.
    return ctype


# --- parsing ---------------------------------------------------------------------------------


def parse(source: Source, headers: Headers) -> Entity:
    """The tree of a message body ``source`` whose header section is ``headers``."""
    top = Entity(0, 0, len(source), headers, top=True)
    _classify(top, source, "text/plain", 0, [0])
    return top


def _entity(source: Source, start: int, end: int, parent: Entity) -> Entity:
    """An entity (header fields, blank line, body) in ``source[start:end]``."""
    if end - start >= 2 and bytes(source[start : start + 2]) == b"\r\n":  # no header fields
        header_end, body_start = start, start + 2
    else:
        found = source.find(b"\r\n\r\n", start, min(end, start + MAX_PART_HEADER))
        if found >= 0:
            header_end, body_start = found + 2, found + 4
        elif end - start <= MAX_PART_HEADER:
            header_end = body_start = end  # fields only, no body
        else:
            # No blank line in the first MAX_PART_HEADER octets: not header fields worth the
            # name. Kept as a body without fields (its octets unchanged), not copied as fields.
            header_end = body_start = start
    headers = Headers.parse(bytes(source[start:header_end]))
    entity = Entity(start, body_start, end, headers, parent=parent)
    entity.has_separator = body_start > header_end
    return entity


def _classify(entity: Entity, source: Source, default: str, depth: int, count: list[int]) -> None:
    entity.content_type = ctype = content_type_of(entity.headers, default)
    count[0] += 1
    if depth >= MAX_DEPTH or count[0] > MAX_PARTS or entity.transfer_encoding not in _IDENTITY:
        return
    if ctype.startswith("multipart/"):
        boundary = content_params(entity.headers).get("boundary")
        if boundary:
            _split(entity, source, boundary.encode("utf-8", "replace"), depth, count)
    elif ctype == "message/rfc822" and entity.body_start < entity.end:
        inner = _entity(source, entity.body_start, entity.end, entity)
        inner.top = False
        entity.kind, entity.inner = "message", inner
        _classify(inner, source, "text/plain", depth + 1, count)


def _split(entity: Entity, source: Source, boundary: bytes, depth: int, count: list[int]) -> None:
    # A delimiter line: (CRLF or the body's start) "--" boundary, transport padding, line end.
    # RFC 2046 §5.1.1; the close delimiter has "--" after the boundary.
    delimiter = re.compile(
        rb"(?:\r\n|^)--" + re.escape(boundary) + rb"(--)?[ \t]*(?:\r\n|$)", re.MULTILINE
    )
    first = delimiter.search(source, entity.body_start, entity.end)
    if first is None or first.group(1):
        return  # no parts: kept as a leaf
    children: list[tuple[int, Entity]] = []
    found = first
    closing = entity.end
    while found is not None and not found.group(1):
        child_start = found.end()
        following = delimiter.search(source, child_start, entity.end)
        child_end = following.start() if following is not None else entity.end
        child = _entity(source, child_start, child_end, entity)
        children.append((found.start(), child))
        found = following
        if found is not None and found.group(1):
            closing = found.start()
    default = "message/rfc822" if entity.content_type == "multipart/digest" else "text/plain"
    for _, child in children:
        _classify(child, source, default, depth + 1, count)
    entity.kind, entity.boundary, entity.children = "multipart", boundary, children
    entity.closing_start = closing


# --- numbering ------------------------------------------------------------------------------


def numbered(top: Entity) -> Iterator[tuple[str, Entity]]:
    """Every addressable entity with its path, in tree order (see the module docstring)."""
    yield from _message_parts(top, "")


def _join(prefix: str, index: int) -> str:
    return f"{prefix}.{index}" if prefix else str(index)


def _message_parts(message: Entity, prefix: str) -> Iterator[tuple[str, Entity]]:
    if message.kind == "multipart":
        for index, (_, child) in enumerate(message.children, start=1):
            yield from _child_parts(child, _join(prefix, index))
    else:
        yield _join(prefix, 1), message


def _child_parts(entity: Entity, path: str) -> Iterator[tuple[str, Entity]]:
    yield path, entity
    if entity.kind == "multipart":
        for index, (_, child) in enumerate(entity.children, start=1):
            yield from _child_parts(child, f"{path}.{index}")
    elif entity.kind == "message" and entity.inner is not None:
        yield from _message_parts(entity.inner, path)


# --- writing --------------------------------------------------------------------------------


def chunks(entity: Entity, source: Source) -> Iterator[bytes]:
    """The entity's octets, edits applied (the top entity: its body only)."""
    if not entity.dirty:
        yield from _copy(source, entity.body_start if entity.top else entity.start, entity.end)
        return
    if not entity.top:
        yield entity._head()
    if entity.new_body is not None or entity.kind == "leaf":
        yield entity.body(source)
    elif entity.kind == "message":
        assert entity.inner is not None
        yield from chunks(entity.inner, source)
    else:
        yield from _copy(source, entity.body_start, entity.children[0][0])
        for delimiter_start, child in entity.children:
            yield from _copy(source, delimiter_start, child.start)
            yield from chunks(child, source)
        yield from _copy(source, entity.closing_start, entity.end)


def size(entity: Entity, source: Source) -> int:
    """``len(b"".join(chunks(entity, source)))`` without building it."""
    if not entity.dirty:
        return entity.end - (entity.body_start if entity.top else entity.start)
    total = 0
    if not entity.top:
        total += len(entity._head())
    if entity.new_body is not None or entity.kind == "leaf":
        return total + len(entity.body(source))
    if entity.kind == "message":
        assert entity.inner is not None
        return total + size(entity.inner, source)
    total += entity.children[0][0] - entity.body_start
    for delimiter_start, child in entity.children:
        total += child.start - delimiter_start + size(child, source)
    return total + entity.end - entity.closing_start


def _copy(source: Source, start: int, end: int) -> Iterator[bytes]:
    for offset in range(start, end, _COPY_CHUNK):
        yield bytes(source[offset : min(offset + _COPY_CHUNK, end)])
