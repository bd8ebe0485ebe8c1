"""Every reply the server sends on its own comes from the catalogue (smtp/replies.py), so the
catalogue's consistency tests (tests/smtp/test_replies.py) cover all of them."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import mailwarden
from mailwarden.smtp import replies

SOURCE = Path(mailwarden.__file__).resolve().parent
# smtpping is a client with its own reply parser; it never sends a reply.
SERVER_CODE = [p for p in sorted(SOURCE.rglob("*.py")) if "tools" not in p.parts]
# The 334 challenge carries the SASL data itself; it is built where that data is (RFC 4954 §4).
BUILT_WITH_THEIR_DATA = {("smtp", "protocol.py")}


def test_no_reply_is_built_outside_the_catalogue() -> None:
    built = []
    for path in SERVER_CODE:
        if path.name == "replies.py" or tuple(path.parts[-2:]) in BUILT_WITH_THEIR_DATA:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "Reply"
            ):
                built.append(f"{path.relative_to(SOURCE)}:{node.lineno}")
    assert built == []


def test_every_catalogue_entry_is_sent_by_someone() -> None:
    text = "\n".join(p.read_text() for p in SERVER_CODE if p.name != "replies.py")
    unused = [name for name in replies.catalogue() if not re.search(rf"\b{name}\b", text)]
    assert unused == []
