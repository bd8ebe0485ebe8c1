"""Data loss prevention for policy scripts: walk a message's MIME tree, describe every part
(file name, declared and sniffed type, size, SHA-256 and SHA-512 of the decoded content) and
match the parts against hash lists, type rules, regular expressions and a card-number detector.

The walker never raises on what a client sent: a part it cannot decode is still reported, with
the reason in ``Part.problems`` (bad base64, missing boundary, …), and a message the parser
cannot take at all gives one part carrying the problem. What is read is bounded by
``max_bytes`` and the nesting of message/rfc822 parts by ``max_depth``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import mimetypes
import quopri
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from email import policy as email_policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Literal

import puremagic

if TYPE_CHECKING:
    from mailwarden.policy.context import Message

__all__ = [
    "Finding",
    "HashList",
    "Part",
    "Rules",
    "Scan",
    "card_numbers",
    "check",
    "luhn",
    "scan",
    "walk",
]

DEFAULT_MAX_BYTES = 25 * 1024 * 1024
"""Octets of the message (headers included) that ``scan`` reads: past it the rest is not seen."""
DEFAULT_MAX_DEPTH = 4
"""How many message/rfc822 parts may nest inside each other before the walker stops descending."""
DEFAULT_MAX_PARTS = 1000
"""Parts reported at most; a message with more is reported with ``Scan.too_many_parts``."""
_THREAD_THRESHOLD = 256 * 1024  # parsing and hashing more than this runs off the event loop
_GENERIC_TYPES = frozenset({"", "application/octet-stream"})
# mimetypes' encodings for names such as .tgz, and the extension puremagic sniffs for each.
_COMPRESSED = {"gzip": "gz", "bzip2": "bz2", "xz": "xz", "compress": "z", "br": "br"}


@dataclass(frozen=True, slots=True)
class Part:
    """One leaf of the MIME tree (multipart containers are walked, not reported).

    ``path`` numbers parts as IMAP does (RFC 3501 §6.4.5): the body of a single-part message is
    "1"; the children of a multipart are "1", "2", …, and their children "2.1", "2.2"; the
    message inside a message/rfc822 part "3" has its parts at "3.1", "3.2", … ."""

    path: str
    filename: str | None
    declared_type: str
    sniffed_type: str | None
    size: int
    sha256: str
    sha512: str
    charset: str | None = None
    disposition: str | None = None
    problems: tuple[str, ...] = ()
    sniffed_extensions: tuple[str, ...] = ()
    sniffed_types: tuple[str, ...] = ()
    content: bytes = field(default=b"", repr=False, compare=False)

    @property
    def malformed(self) -> bool:
        return bool(self.problems)

    @property
    def extension(self) -> str | None:
        """The file name's last extension, lower-case and without the dot."""
        return _extension(self.filename)

    def text(self) -> str | None:
        """The decoded content of a text/* part as text (its charset, else UTF-8; undecodable
        octets become U+FFFD), None for other types."""
        if not self.declared_type.startswith("text/"):
            return None
        return _decode_text(self.content, self.charset)


@dataclass(frozen=True, slots=True)
class Scan:
    """What the walker found. ``truncated``: the message was larger than ``max_bytes`` and only
    its beginning was walked (the last part's size and digests are of what was read)."""

    parts: tuple[Part, ...]
    truncated: bool = False
    too_many_parts: bool = False
    size: int = 0

    @property
    def malformed(self) -> bool:
        return any(part.malformed for part in self.parts)

    def __iter__(self) -> Iterator[Part]:
        return iter(self.parts)


# --- walking ---------------------------------------------------------------------------------


def walk(
    data: bytes,
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_parts: int = DEFAULT_MAX_PARTS,
    truncated: bool = False,
) -> Scan:
    """Walk a whole message given as bytes. Never raises on the message's content."""
    walker = _Walker(max_depth=max_depth, max_parts=max_parts)
    try:
        root = BytesParser(policy=email_policy.default).parsebytes(data)
        walker.visit(root, prefix="", depth=0)
    except Exception as error:  # the stdlib parser has corner cases; report, never crash
        # The whole message as one part, so its octets are still hashed and can be refused.
        return Scan(
            (_opaque_part("1", data, f"unparsable message: {error!r}"),),
            truncated,
            False,
            len(data),
        )
    return Scan(tuple(walker.parts), truncated, walker.too_many, len(data))


async def scan(
    message: Message | bytes,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_parts: int = DEFAULT_MAX_PARTS,
) -> Scan:
    """Walk the message a data hook got (or raw bytes). Reads at most ``max_bytes`` octets of
    it, headers as edited so far included; a larger message is walked up to there and the
    result has ``truncated`` set, so a script can decide (e.g. ``Defer`` or skip) itself."""
    data, truncated = _read_bounded(message, max_bytes)
    if len(data) < _THREAD_THRESHOLD:
        return walk(data, max_depth=max_depth, max_parts=max_parts, truncated=truncated)
    # Parsing and hashing megabytes would stall every other connection of the worker.
    return await asyncio.to_thread(
        walk, data, max_depth=max_depth, max_parts=max_parts, truncated=truncated
    )


def _read_bounded(message: Message | bytes, max_bytes: int) -> tuple[bytes, bool]:
    if isinstance(message, bytes | bytearray | memoryview):
        data = bytes(message)
        return data[:max_bytes], len(data) > max_bytes
    head = message.headers.to_bytes() + b"\r\n"
    budget = max_bytes - len(head)
    if budget < 0:
        return head[:max_bytes], True
    with message.open_body() as handle:
        body = handle.read(budget + 1)
    return head + body[:budget], len(body) > budget


class _Walker:
    def __init__(self, *, max_depth: int, max_parts: int) -> None:
        self.max_depth = max_depth
        self.max_parts = max_parts
        self.parts: list[Part] = []
        self.too_many = False

    def visit(self, node: EmailMessage, prefix: str, depth: int) -> None:
        """``prefix`` is the path of the message whose body ``node`` is ("" at the top)."""
        if node.is_multipart():
            children = node.get_payload()
            for index, child in enumerate(children, start=1):
                self.add(child, _join(prefix, index), depth)
            if not children:
                self.leaf(node, _join(prefix, 1), ["multipart with no parts"])
            return
        self.leaf(node, _join(prefix, 1), [])

    def add(self, node: EmailMessage, path: str, depth: int) -> None:
        """A child at ``path``: a nested multipart keeps numbering below it, a message/rfc822
        part numbers its message's parts below it, anything else is a leaf."""
        if self.full():
            return
        if node.is_multipart() and node.get_content_maintype() == "multipart":
            children = node.get_payload()
            for index, child in enumerate(children, start=1):
                self.add(child, f"{path}.{index}", depth)
            if not children:
                self.leaf(node, path, ["multipart with no parts"])
            return
        if node.get_content_type() == "message/rfc822" and node.is_multipart():
            if depth + 1 > self.max_depth:
                self.leaf(node, path, [f"nested message deeper than max_depth={self.max_depth}"])
                return
            self.visit(node.get_payload(0), path, depth + 1)
            return
        self.leaf(node, path, [])

    def full(self) -> bool:
        if len(self.parts) >= self.max_parts:
            self.too_many = True
        return self.too_many

    def leaf(self, node: EmailMessage, path: str, problems: list[str]) -> None:
        if self.full():
            return
        try:
            self.parts.append(_describe(node, path, problems))
        except Exception as error:  # a header the stdlib chokes on must not hide the part
            raw = _raw_payload(node)
            self.parts.append(_opaque_part(path, raw, f"undescribable part: {error!r}"))


def _join(prefix: str, index: int) -> str:
    return f"{prefix}.{index}" if prefix else str(index)


def _describe(node: EmailMessage, path: str, problems: list[str]) -> Part:
    problems = problems + [_defect_text(defect) for defect in node.defects]
    if node.get_content_maintype() == "multipart":
        # A multipart the parser could not split (no boundary parameter, boundary never seen):
        # its body is reported whole, so its octets are hashed and searched all the same.
        problems.append("multipart body not split into parts")
    content, decode_problem = _decode(node)
    if decode_problem:
        problems.append(decode_problem)
    filename = _filename(node, problems)
    sniffed = _sniff(content, _extension(filename))
    return Part(
        path=path,
        filename=filename,
        declared_type=node.get_content_type(),
        sniffed_type=sniffed[0],
        size=len(content),
        sha256=hashlib.sha256(content).hexdigest(),
        sha512=hashlib.sha512(content).hexdigest(),
        charset=node.get_content_charset(),
        disposition=node.get_content_disposition(),
        problems=tuple(dict.fromkeys(problems)),  # de-duplicated, order kept
        sniffed_extensions=sniffed[1],
        sniffed_types=sniffed[2],
        content=content,
    )


def _opaque_part(path: str, data: bytes, problem: str) -> Part:
    return Part(
        path=path,
        filename=None,
        declared_type="application/octet-stream",
        sniffed_type=None,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        sha512=hashlib.sha512(data).hexdigest(),
        problems=(problem,),
        content=data,
    )


def _defect_text(defect: Exception) -> str:
    # e.g. StartBoundaryNotFoundDefect -> "start boundary not found"
    name = type(defect).__name__.removesuffix("Defect")
    words = re.sub(r"(?<!^)(?=[A-Z])", " ", name).lower()
    return words


def _filename(node: EmailMessage, problems: list[str]) -> str | None:
    """Content-Disposition ``filename``, else Content-Type ``name``; RFC 2231 parameter value
    continuations and charsets are decoded (RFC 2231 §3-4), as are RFC 2047 encoded words,
    which many clients put there although RFC 2047 §5 forbids it."""
    try:
        name = node.get_filename()
    except Exception as error:
        problems.append(f"undecodable file name: {error!r}")
        return None
    return str(name) if name is not None else None


def _extension(filename: str | None) -> str | None:
    if not filename:
        return None
    suffix = PurePosixPath(filename.replace("\\", "/")).suffix
    return suffix[1:].lower() or None


def _raw_payload(node: EmailMessage) -> bytes:
    # The undecoded payload as received: ``get_payload(decode=False)`` would hand back octets
    # that are not ASCII already replaced by U+FFFD, so the stored payload is read directly.
    payload = node._payload  # type: ignore[attr-defined]
    if isinstance(payload, str):
        # BytesParser keeps non-ASCII octets as surrogate escapes; this gives them back.
        return payload.encode("utf-8", "surrogateescape")
    # A message/rfc822 part not walked (too deep): its message, as the parser re-serialises it.
    return b"".join(inner.as_bytes() for inner in payload)


def _decode(node: EmailMessage) -> tuple[bytes, str | None]:
    """The content with its Content-Transfer-Encoding undone (RFC 2045 §6), and what was wrong
    with it, if anything. Decoding is done here rather than by ``get_payload(decode=True)``,
    which silently drops bad base64 instead of saying so."""
    raw = _raw_payload(node)
    encoding = str(node.get("content-transfer-encoding", "7bit")).strip().lower()
    if encoding == "base64":
        return _decode_base64(raw)
    if encoding == "quoted-printable":
        return quopri.decodestring(raw), None
    if encoding in ("7bit", "8bit", "binary", ""):
        return raw, None
    return raw, f"unknown content-transfer-encoding {encoding!r}"


def _decode_base64(raw: bytes) -> tuple[bytes, str | None]:
    compact = re.sub(rb"\s+", b"", raw)
    try:
        return base64.b64decode(compact, validate=True), None
    except (binascii.Error, ValueError):
        pass
    # RFC 2045 §6.8: characters outside the alphabet are to be ignored; padding may be missing.
    cleaned = re.sub(rb"[^A-Za-z0-9+/]", b"", compact)
    if len(cleaned) % 4 == 1:  # a lone trailing character carries no whole octet
        cleaned = cleaned[:-1]
    cleaned += b"=" * (-len(cleaned) % 4)
    try:
        return base64.b64decode(cleaned), "bad base64"
    except (binascii.Error, ValueError):  # pragma: no cover - cleaned input always decodes
        return raw, "bad base64"


def _sniff(
    content: bytes, extension: str | None
) -> tuple[str | None, tuple[str, ...], tuple[str, ...]]:
    """puremagic's view of the content: the most likely specific MIME type, and every
    extension and type the content's signatures fit. Signatures are often shared (a .docx is
    a zip), so a candidate fitting the file name's ``extension`` is preferred."""
    if not content:
        return None, (), ()
    try:
        matches = puremagic.magic_string(content)
    except Exception:  # PureError (unknown), ValueError, or a library corner case
        return None, (), ()
    extensions = tuple(dict.fromkeys(m.extension.lstrip(".").lower() for m in matches))
    types = tuple(dict.fromkeys(m.mime_type.lower() for m in matches if m.mime_type))
    fitting = [
        m.mime_type.lower()
        for m in matches
        if m.extension.lstrip(".").lower() == extension
        and m.mime_type.lower() not in _GENERIC_TYPES
    ]
    specific = fitting or [t for t in types if t not in _GENERIC_TYPES]
    best = specific[0] if specific else (types[0] if types else None)
    return best, extensions, types


def _decode_text(content: bytes, charset: str | None) -> str:
    try:
        return content.decode(charset or "utf-8", errors="replace")
    except LookupError:  # an unknown charset name: read it as UTF-8 rather than not at all
        return content.decode("utf-8", errors="replace")


# --- card numbers ----------------------------------------------------------------------------

# Digits joined by at most one space or dash between each two: "4111 1111-1111 1111 12/27".
_DIGIT_RUN = re.compile(r"[0-9](?:[ -]?[0-9])*")
_GROUP = re.compile(r"[0-9]+")


def luhn(digits: str) -> bool:
    """The Luhn (mod 10) check of ISO/IEC 7812-1 Annex B over a string of digits."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


@dataclass(frozen=True, slots=True)
class CardMatch:
    start: int
    end: int
    masked: str  # every digit but the last four replaced by "*", separators kept


def card_numbers(text: str) -> list[CardMatch]:
    """Card numbers in ``text``. Digits written together or joined by single spaces or dashes
    form a run (a run never touches another digit); a run's groups are its digit strings
    between separators. A card number is a span of whole consecutive groups holding 13 to 19
    digits that passes the Luhn check: scanning from the left, the longest such span starting
    at each group is taken, and the scan goes on after it. So "4111 1111 1111 1111 12/27" finds
    the number, while a 30-digit reference written without separators holds no card number."""
    found = []
    for run in _DIGIT_RUN.finditer(text):
        groups = list(_GROUP.finditer(run.group()))
        first = 0
        while first < len(groups):
            last = _longest_card(groups, first)
            if last is None:
                first += 1
                continue
            start, end = run.start() + groups[first].start(), run.start() + groups[last].end()
            found.append(CardMatch(start, end, _mask(text[start:end])))
            first = last + 1
    return found


def _longest_card(groups: list[re.Match[str]], first: int) -> int | None:
    """The last group of the longest card number starting at group ``first``, if any."""
    best = None
    digits = ""
    for index in range(first, len(groups)):
        digits += groups[index].group()
        if len(digits) > 19:
            break
        if len(digits) >= 13 and luhn(digits):
            best = index
    return best


def _mask(number: str) -> str:
    keep = 4
    out = []
    for char in reversed(number):
        if char.isdigit():
            out.append(char if keep > 0 else "*")
            keep -= 1
        else:
            out.append(char)
    return "".join(reversed(out))


# --- hash lists and rules --------------------------------------------------------------------

_HEX = re.compile(r"[0-9a-f]{64}|[0-9a-f]{128}")


class HashList:
    """A set of SHA-256 (64 hex digits) and SHA-512 (128) digests, matched against each part's
    decoded content. Build it once (at module level of the script), not per message."""

    __slots__ = ("digests", "source")

    def __init__(self, digests: Iterable[str] = (), *, source: str = "<list>") -> None:
        self.source = source
        self.digests: frozenset[str] = frozenset(self._check(d, source, None) for d in digests)

    @classmethod
    def from_file(cls, path: str | Path) -> HashList:
        """One digest a line, as ``sha256sum`` writes them (the digest first, then anything);
        blank lines and lines starting with ``#`` are skipped. A bad line raises ValueError
        naming the file and line."""
        path = Path(path)
        digests = []
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            digests.append(cls._check(stripped.split()[0], str(path), number))
        listed = cls()
        listed.source = str(path)
        listed.digests = frozenset(digests)
        return listed

    @staticmethod
    def _check(digest: str, source: str, line: int | None) -> str:
        value = digest.strip().lower()
        if not _HEX.fullmatch(value):
            where = f"{source}, line {line}" if line else source
            raise ValueError(f"{where}: {digest!r} is not a SHA-256 or SHA-512 hex digest")
        return value

    def __contains__(self, digest: object) -> bool:
        return isinstance(digest, str) and digest.lower() in self.digests

    def __len__(self) -> int:
        return len(self.digests)

    def matches(self, part: Part) -> bool:
        return part.sha256 in self.digests or part.sha512 in self.digests


RuleKind = Literal["hash", "extension", "type", "mismatch", "pattern", "card", "malformed"]


@dataclass(frozen=True, slots=True)
class Finding:
    """One rule that matched one part. ``snippet`` is the matched text for patterns (at most
    80 characters) and the masked number for cards; it is safe to log."""

    rule: str
    kind: RuleKind
    part: str
    detail: str
    snippet: str | None = None


@dataclass(slots=True)
class Rules:
    """What ``check`` looks for. Every field is optional; build a Rules once per script.

    - ``hashes``: a HashList (or an iterable of hex digests);
    - ``block_extensions``: file name extensions (without the dot, any case), e.g. {"exe"};
    - ``block_types``: MIME types refused whether declared or sniffed;
    - ``type_mismatch``: flag parts whose content is sniffed as something the file name's
      extension (or, with no file name, the declared type) does not fit: an .exe named .pdf;
    - ``patterns``: name → regular expression searched in the text of text/* parts;
    - ``cards``: look for card numbers (Luhn-checked) in text parts;
    - ``malformed``: report parts the walker found malformed (and a truncated scan).
    """

    hashes: HashList | Iterable[str] | None = None
    block_extensions: Iterable[str] = ()
    block_types: Iterable[str] = ()
    type_mismatch: bool = False
    patterns: dict[str, str | re.Pattern[str]] = field(default_factory=dict)
    cards: bool = False
    malformed: bool = False

    def __post_init__(self) -> None:
        if self.hashes is not None and not isinstance(self.hashes, HashList):
            self.hashes = HashList(self.hashes)
        self.block_extensions = frozenset(e.lower().lstrip(".") for e in self.block_extensions)
        self.block_types = frozenset(t.lower() for t in self.block_types)
        self.patterns = {name: re.compile(p) for name, p in self.patterns.items()}


def check(result: Scan, rules: Rules) -> list[Finding]:
    """Every finding, part by part in tree order; an empty list means nothing matched."""
    findings: list[Finding] = []
    if rules.malformed and result.truncated:
        findings.append(Finding("malformed", "malformed", "", "message larger than max_bytes"))
    for part in result.parts:
        findings.extend(_check_part(part, rules))
    return findings


def _check_part(part: Part, rules: Rules) -> Iterator[Finding]:
    if isinstance(rules.hashes, HashList) and rules.hashes.matches(part):
        yield Finding("hashes", "hash", part.path, f"sha256 {part.sha256} listed")
    if part.extension and part.extension in rules.block_extensions:
        yield Finding("block_extensions", "extension", part.path, f"file name {part.filename!r}")
    for kind_of_type in dict.fromkeys((part.declared_type, part.sniffed_type)):
        if kind_of_type and kind_of_type in rules.block_types:
            yield Finding("block_types", "type", part.path, f"type {kind_of_type}")
    if rules.type_mismatch and (detail := _mismatch(part)):
        yield Finding("type_mismatch", "mismatch", part.path, detail)
    if rules.malformed and part.malformed:
        yield Finding("malformed", "malformed", part.path, "; ".join(part.problems))
    if rules.patterns or rules.cards:
        text = part.text()
        if text is not None:
            yield from _check_text(part.path, text, rules)


def _check_text(path: str, text: str, rules: Rules) -> Iterator[Finding]:
    for name, pattern in rules.patterns.items():
        assert isinstance(pattern, re.Pattern)
        for found in pattern.finditer(text):
            yield Finding(name, "pattern", path, f"pattern {name!r}", found.group()[:80])
    if rules.cards:
        for card in card_numbers(text):
            yield Finding("cards", "card", path, "card number (Luhn)", card.masked)


def _mismatch(part: Part) -> str | None:
    """Content sniffed as a type that neither the file name's extension nor (with no file
    name) the declared type fits. Content puremagic cannot identify never mismatches."""
    if not part.sniffed_extensions:
        return None
    if part.extension:
        if part.extension in part.sniffed_extensions:
            return None
        guessed, compression = mimetypes.guess_type(f"x.{part.extension}", strict=False)
        if guessed and guessed.lower() in part.sniffed_types:
            return None
        if compression and _COMPRESSED.get(compression) in part.sniffed_extensions:
            return None  # .tgz: a tar file, gzip-compressed
        return f"named {part.filename!r} but the content is {_sniffed_name(part)}"
    declared = part.declared_type
    if declared in _GENERIC_TYPES or declared.startswith("text/") or declared in part.sniffed_types:
        return None
    extensions = {e.lstrip(".") for e in mimetypes.guess_all_extensions(declared, strict=False)}
    if extensions & set(part.sniffed_extensions):
        return None
    return f"declared {declared} but the content is {_sniffed_name(part)}"


def _sniffed_name(part: Part) -> str:
    return part.sniffed_type or f".{part.sniffed_extensions[0]}"
