"""MTA-STS records and policies as text (RFC 8461 §3.1, §3.2) and MX matching (§4.1).

Pure functions: no I/O. A malformed record or policy raises :class:`PolicyError`, whose text
says what is wrong; the caller then treats the domain as having no (new) policy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["MAX_AGE_LIMIT", "Policy", "PolicyError", "mx_matches", "parse_policy", "parse_txt"]

MAX_AGE_LIMIT = 31557600  # §3.2: max_age is at most one year

# §3.1: sts-id = 1*32(ALPHA / DIGIT); extension names and values.
_ID = re.compile(r"[A-Za-z0-9]{1,32}")
_EXT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
_EXT_VALUE = re.compile(r"[\x21-\x3a\x3c\x3e-\x7e]+")
# §3.2: a policy field name, and an mx value: a domain with an optional leading "*.".
_FIELD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_MODES = ("enforce", "testing", "none")


class PolicyError(ValueError):
    """A TXT record or a policy file that does not follow RFC 8461's grammar."""


def parse_txt(text: str) -> str:
    """The ``id`` of an ``_mta-sts`` TXT record such as ``v=STSv1; id=20160831085700Z;``.

    §3.1: ``v=STSv1`` first, then ``;``-separated fields (white space around them allowed,
    a trailing ``;`` too); unknown fields are ignored; exactly one ``id`` of 1-32 letters and
    digits. Raises PolicyError otherwise."""
    fields = [part.strip(" \t") for part in text.split(";")]
    if fields and fields[-1] == "":
        fields.pop()  # the optional trailing ";"
    if not fields or fields[0] != "v=STSv1":
        raise PolicyError(f"expected a record starting with 'v=STSv1', got {text!r}")
    ids = []
    for field in fields[1:]:
        name, sep, value = field.partition("=")
        if not sep or not _EXT_NAME.fullmatch(name) or not _EXT_VALUE.fullmatch(value):
            raise PolicyError(f"malformed field {field!r} in {text!r}")
        if name == "id":
            if not _ID.fullmatch(value):
                raise PolicyError(f"expected an id of 1 to 32 letters and digits, got {value!r}")
            ids.append(value)
    if len(ids) != 1:
        raise PolicyError(f"expected one id field, found {len(ids)} in {text!r}")
    return ids[0]


@dataclass(frozen=True, slots=True)
class Policy:
    """A parsed policy file: ``mode``, ``max_age`` seconds, ``mx`` patterns (lower case), and
    ``lines``, the file's fields as sent (RFC 8460 §4.4 ``policy-string``)."""

    mode: str
    max_age: int
    mx: tuple[str, ...]
    lines: tuple[str, ...]

    def allows(self, host: str) -> bool:
        """Whether MX host ``host`` matches one of the policy's patterns (§4.1)."""
        return any(mx_matches(pattern, host) for pattern in self.mx)


def _valid_domain(name: str) -> bool:
    labels = name.split(".")
    return len(labels) >= 2 and all(_LABEL.fullmatch(label) for label in labels)


def parse_policy(text: str) -> Policy:
    """Parse a policy file (§3.2): ``key: value`` lines ending in LF or CRLF.

    ``version: STSv1``, ``mode`` (``enforce``, ``testing`` or ``none``) and ``max_age`` (a
    non-negative integer of at most 10 digits, at most 31557600) are required; ``mx`` may be
    repeated and is required unless the mode is ``none``; unknown fields are ignored. A field
    other than ``mx`` given twice is an error (which one would count is not said). Raises
    PolicyError."""
    values: dict[str, str] = {}
    mx: list[str] = []
    lines: list[str] = []
    for raw in text.replace("\r\n", "\n").split("\n"):
        line = raw.rstrip(" \t")
        if not line:
            continue
        name, sep, value = line.partition(":")
        value = value.lstrip(" \t")
        if not sep or not _FIELD_NAME.fullmatch(name) or not value:
            raise PolicyError(f"expected 'key: value', got {line!r}")
        if any(not 0x20 <= ord(c) <= 0x7E and c != "\t" for c in value):
            raise PolicyError(f"non-ASCII or control character in {line!r}")
        lines.append(line)
        if name == "mx":
            pattern = value.lower().rstrip(".")
            domain = pattern[2:] if pattern.startswith("*.") else pattern
            if not _valid_domain(domain):
                raise PolicyError(f"expected a host name or '*.' and a domain, got mx {value!r}")
            mx.append(pattern)
        elif name in ("version", "mode", "max_age"):
            if name in values:
                raise PolicyError(f"field {name!r} given twice")
            values[name] = value
    if values.get("version") != "STSv1":
        raise PolicyError(f"expected 'version: STSv1', got {values.get('version')!r}")
    mode = values.get("mode")
    if mode not in _MODES:
        raise PolicyError(f"expected mode enforce, testing or none, got {mode!r}")
    age = values.get("max_age", "")
    if not re.fullmatch(r"[0-9]{1,10}", age) or int(age) > MAX_AGE_LIMIT:
        raise PolicyError(f"expected max_age 0..{MAX_AGE_LIMIT} seconds, got {age!r}")
    if mode != "none" and not mx:
        raise PolicyError(f"expected at least one mx pattern in mode {mode}")
    return Policy(mode, int(age), tuple(mx), tuple(lines))


def mx_matches(pattern: str, host: str) -> bool:
    """§4.1: ``mail.example.com`` matches itself (case-insensitively, a trailing dot
    ignored); ``*.example.com`` matches exactly one more leftmost label (``mail.example.com``,
    not ``example.com`` nor ``a.b.example.com``)."""
    pattern = pattern.lower().rstrip(".")
    host = host.lower().rstrip(".")
    if pattern.startswith("*."):
        label, dot, rest = host.partition(".")
        return bool(label) and bool(dot) and rest == pattern[2:]
    return host == pattern
