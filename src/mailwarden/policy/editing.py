"""The body edits of the data hook's message: text added to the body, parts replaced or removed.

Each function edits the :mod:`mailwarden.policy.mime` tree in place and marks what it touched;
what it does not touch keeps its received octets. Every result is valid MIME: a replaced part
gets its own Content-Type, Content-Transfer-Encoding and (with a file name) Content-Disposition;
encodings are chosen so that no line exceeds 998 octets, 7-bit parts stay 7-bit and no line can
be taken for an enclosing boundary (RFC 2046 §5.1.1); MIME-Version is added where missing
(RFC 2045 §4).
"""

from __future__ import annotations

import codecs
import html as html_escape
import re
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message as EmailMessage
from typing import Literal, Protocol

from mailwarden.policy import mime, transfer
from mailwarden.policy.headers import Headers

_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*")
_BODY_OPEN = re.compile(rb"<body\b[^>]*>", re.IGNORECASE)
_BODY_CLOSE = re.compile(rb"</body\s*>", re.IGNORECASE)
# Charsets where octets of one encoded piece can simply follow another's: ASCII-compatible and
# stateless, or returning to ASCII at the end (ISO-2022-JP, RFC 1468).
_UNSAFE_CHARSETS = ("utf-16", "utf-32", "utf_16", "utf_32", "utf-7", "utf_7")

Where = Literal["start", "end"]


class PartRef(Protocol):
    """Anything naming a part: a :class:`PartInfo`, a ``dlp.Part``, or a path string."""

    @property
    def path(self) -> str: ...


@dataclass(frozen=True, slots=True)
class PartInfo:
    """One part of the message as ``message.parts()`` lists it (paths as ``dlp`` numbers them).

    ``size`` is of the body as transfer-encoded; ``multipart`` parts contain others."""

    path: str
    content_type: str
    filename: str | None
    disposition: str | None
    charset: str | None
    transfer_encoding: str
    size: int
    multipart: bool


def describe(top: mime.Entity, source: mime.Source) -> list[PartInfo]:
    return [
        PartInfo(
            path=path,
            content_type=entity.content_type,
            filename=entity.filename,
            disposition=entity.disposition,
            charset=entity.param("charset"),
            transfer_encoding=entity.transfer_encoding,
            size=len(entity.new_body)
            if entity.new_body is not None
            else entity.end - entity.body_start,
            multipart=entity.kind == "multipart",
        )
        for path, entity in mime.numbered(top)
    ]


def find(top: mime.Entity, part: PartRef | str) -> tuple[str, mime.Entity]:
    """The entity ``part`` names. Raises ValueError for a path the message does not have."""
    path = part if isinstance(part, str) else getattr(part, "path", None)
    if not isinstance(path, str):
        raise TypeError(f"a part is a path string or has .path, not {type(part).__name__}")
    for found_path, entity in mime.numbered(top):
        if found_path == path:
            return path, entity
    raise ValueError(f"the message has no part {path!r}")


# --- removing and replacing -----------------------------------------------------------------


def remove(top: mime.Entity, part: PartRef | str) -> None:
    """Remove a part of a multipart. Raises ValueError for the message's own body, the body of
    an enclosed message, and the only part of a multipart (RFC 2046 §5.1.1 wants at least
    one): replace those instead."""
    path, entity = find(top, part)
    parent = entity.parent
    if parent is None or parent.kind != "multipart":
        raise ValueError(f"part {path} is a message's body, not a part of a multipart; replace it")
    if len(parent.children) == 1:
        raise ValueError(f"part {path} is the only part of its multipart; replace it instead")
    parent.children = [(start, child) for start, child in parent.children if child is not entity]
    parent.mark_dirty()


def replace(
    top: mime.Entity,
    part: PartRef | str,
    content: str | bytes,
    *,
    content_type: str | None = None,
    filename: str | None = None,
) -> None:
    """Make ``part`` a leaf with ``content``: text (str) as text/plain by default, in US-ASCII
    or UTF-8; bytes as application/octet-stream by default, base64. ``filename`` makes it an
    attachment of that name. Raises ValueError for a malformed ``content_type``."""
    _, entity = find(top, part)
    if isinstance(content, str):
        ctype = content_type or "text/plain"
    elif isinstance(content, bytes | bytearray | memoryview):
        ctype = content_type or "application/octet-stream"
        content = bytes(content)
    else:
        raise TypeError(f"new content is str or bytes, not {type(content).__name__}")
    if not _TYPE.fullmatch(ctype):
        raise ValueError(f"content_type {ctype!r} is not type/subtype (RFC 2045 §5.1)")
    if filename is not None and ("\r" in filename or "\n" in filename or not filename):
        raise ValueError("filename must be non-empty and hold no CR or LF")
    params: list[tuple[str, str]] = []
    if isinstance(content, str):
        data = transfer.canonical_newlines(content.encode("utf-8"))
        charset = "us-ascii" if content.isascii() else "utf-8"
        if ctype.lower().startswith("text/"):
            params.append(("charset", charset))
        encoding = "7bit" if transfer.fits_7bit(data) else "quoted-printable"
    else:
        data, encoding = content, "base64"
    body = transfer.encode(data, encoding)
    if encoding != "base64" and transfer.collides(body, entity.boundaries()):
        encoding, body = "base64", transfer.encode_base64(data)
    headers = entity.editable_headers()
    for name in [name for name, _ in headers if name.lower().startswith("content-")]:
        headers.delete(name)
    _add(headers, "Content-Type", ctype.lower(), params)
    headers.add("Content-Transfer-Encoding", encoding, at_top=False)
    if filename is not None:
        _add(headers, "Content-Disposition", "attachment", [("filename", filename)])
    if entity.top:
        ensure_mime_version(headers)
    entity.headers = headers
    entity.kind, entity.children, entity.inner, entity.boundary = "leaf", [], None, None
    entity.content_type, entity.new_body = ctype.lower(), body
    entity.mark_dirty()


def ensure_mime_version(headers: Headers) -> None:
    if "MIME-Version" not in headers:
        headers.add("MIME-Version", "1.0", at_top=False)


def _add(headers: Headers, name: str, value: str, params: list[tuple[str, str]]) -> None:
    """``Name: value; p=v`` at the end, one parameter a line, non-ASCII or long values as
    RFC 2231 continuations, so that no line grows long whatever the file name."""
    lines = [f"{name}: {value}"]
    for key, text in params:
        lines.extend(_parameter(key, text))
    field = ";\r\n ".join(lines) + "\r\n"
    headers.add_folded(field.encode("ascii"), at_top=False)


def _parameter(key: str, text: str) -> list[str]:
    if text.isascii() and len(text) < 60 and not re.search(r'["\\\x00-\x1f\x7f]', text):
        return [f'{key}="{text}"']
    encoded = urllib.parse.quote(text.encode("utf-8"), safe="")
    # RFC 2231 §3-4: numbered continuations, the first carrying the charset; a piece is cut
    # back so that it never splits a %XX escape.
    pieces, rest = [], encoded
    while rest:
        cut = min(50, len(rest))
        percent = rest.rfind("%", max(cut - 2, 0), cut)
        if cut < len(rest) and percent >= 0:
            cut = percent
        pieces.append(rest[:cut])
        rest = rest[cut:]
    if len(pieces) == 1:
        return [f"{key}*=utf-8''{pieces[0]}"]
    charset = "utf-8''"
    return [
        f"{key}*{index}*={charset if index == 0 else ''}{piece}"
        for index, piece in enumerate(pieces)
    ]


# --- text added to the body -----------------------------------------------------------------


def text_targets(top: mime.Entity) -> Iterator[tuple[str, mime.Entity]]:
    """The first inline text/plain and the first inline text/html leaf of the message's own
    body (attachments and enclosed messages are not the body)."""
    seen: set[str] = set()
    for path, entity in _body_leaves(top, "1" if top.kind != "multipart" else ""):
        ctype = entity.content_type
        if ctype in ("text/plain", "text/html") and ctype not in seen:
            seen.add(ctype)
            yield path, entity


def _body_leaves(entity: mime.Entity, path: str) -> Iterator[tuple[str, mime.Entity]]:
    if entity.disposition == "attachment" and not entity.top:
        return
    if entity.kind == "multipart":
        for index, (_, child) in enumerate(entity.children, start=1):
            yield from _body_leaves(child, f"{path}.{index}" if path else str(index))
    elif entity.kind == "leaf":
        yield path, entity


def insert_text(
    top: mime.Entity, source: mime.Source, text: str, html: str | None, where: Where
) -> list[str]:
    """Add ``text`` (and ``html``, or ``text`` escaped, to an HTML part) at the start or end of
    the body's text parts; returns the paths of the parts changed (empty: no text body)."""
    if not isinstance(text, str) or (html is not None and not isinstance(html, str)):
        raise TypeError("text and html are str")
    if html is None:
        escaped = html_escape.escape(text).replace("\r\n", "\n").replace("\n", "<br>\r\n")
        html = f"<p>{escaped}</p>"
    changed = []
    for path, entity in list(text_targets(top)):
        is_html = entity.content_type == "text/html"
        if _insert(entity, source, html if is_html else text, is_html, where):
            changed.append(path)
    return changed


def _insert(
    entity: mime.Entity, source: mime.Source, piece: str, is_html: bool, where: Where
) -> bool:
    encoding = entity.transfer_encoding
    content = transfer.decode(entity.body(source), encoding)
    charset = (entity.param("charset") or "us-ascii").lower()
    if content is None or not _known_charset(charset):
        return False
    newline = "\r\n"
    piece = piece.replace("\r\n", "\n").replace("\r", "\n").replace("\n", newline)
    try:
        added = piece.encode(charset, "xmlcharrefreplace" if is_html else "strict")
    except UnicodeEncodeError:
        # Plain text in a charset that cannot write the new text: the part becomes UTF-8,
        # which is only possible if what it holds reads cleanly in its own charset.
        try:
            content = content.decode(charset).encode("utf-8")
        except UnicodeDecodeError:
            return False
        charset, added = "utf-8", piece.encode("utf-8")
        _set_param(entity, "charset", "utf-8")
    content = _placed(content, added, is_html, where)
    new_encoding = _encoding_for(content, encoding, entity.boundaries())
    if new_encoding in ("7bit", "8bit", "binary", "") and new_encoding == encoding:
        body = content
    else:
        body = transfer.encode(content, new_encoding)
    if new_encoding != encoding:
        _set_header(entity, "Content-Transfer-Encoding", new_encoding)
    entity.new_body = body
    entity.mark_dirty()
    return True


def _placed(content: bytes, added: bytes, is_html: bool, where: Where) -> bytes:
    if is_html:
        tag = _BODY_OPEN.search(content) if where == "start" else None
        if where == "start":
            at = tag.end() if tag else 0
            return content[:at] + added + content[at:]
        closes = list(_BODY_CLOSE.finditer(content))
        at = closes[-1].start() if closes else len(content)
        return content[:at] + added + content[at:]
    if where == "start":
        return added + (b"" if added.endswith(b"\r\n") else b"\r\n") + content
    gap = b"" if not content or content.endswith(b"\r\n") else b"\r\n"
    return content + gap + added + (b"" if added.endswith(b"\r\n") else b"\r\n")


def _encoding_for(content: bytes, encoding: str, boundaries: list[bytes]) -> str:
    if encoding in ("base64", "quoted-printable"):
        chosen = encoding
    elif encoding in ("8bit", "binary"):
        chosen = encoding if transfer.fits_8bit(content) else "quoted-printable"
    else:
        chosen = encoding if transfer.fits_7bit(content) else "quoted-printable"
    if chosen != "base64" and transfer.collides(transfer.encode(content, chosen), boundaries):
        chosen = "base64"
    return chosen


def _known_charset(charset: str) -> bool:
    try:
        name = codecs.lookup(charset).name
    except LookupError:
        return False
    return not name.startswith(_UNSAFE_CHARSETS)


def _set_header(entity: mime.Entity, name: str, value: str) -> None:
    entity.editable_headers().set(name, value)
    if entity.top:
        ensure_mime_version(entity.headers)


def _set_param(entity: mime.Entity, name: str, value: str) -> None:
    parsed = EmailMessage()
    parsed["Content-Type"] = entity.headers.get("Content-Type") or entity.content_type
    parsed.set_param(name, value)
    _set_header(
        entity, "Content-Type", str(parsed["Content-Type"]).replace("\n", "").replace("\r", "")
    )
