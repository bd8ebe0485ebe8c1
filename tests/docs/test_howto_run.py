"""The ``edit=FILE`` blocks of the how-tos (tests/support/howto_run.py): a page's constant
edits must land on the example's own constants, or the page's test runs an unedited copy."""

from __future__ import annotations

import pytest
from tests.support.howto import Block
from tests.support.howto_run import EXAMPLES, edited_example


def edit(text: str) -> Block:
    return Block("python", {"edit": "inbound_filter.py"}, text, 1)


def test_an_edit_replaces_the_constant_with_its_annotation() -> None:
    edited = edited_example(edit('DNSBL_ZONES: tuple[str, ...] = ("bl.example",)\n'))
    original = (EXAMPLES / "inbound_filter.py").read_text()
    assert 'DNSBL_ZONES: tuple[str, ...] = ("bl.example",)\n' in edited
    assert 'zen.spamhaus.org",)' in original and 'zen.spamhaus.org",)' not in edited
    # Nothing else changed: the same lines but the one.
    assert len(edited.splitlines()) == len(original.splitlines())


def test_an_edit_of_a_constant_the_example_lacks_is_an_error() -> None:
    with pytest.raises(ValueError, match="no constant NO_SUCH_SETTING"):
        edited_example(edit("NO_SUCH_SETTING = 1\n"))
