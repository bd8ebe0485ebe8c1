"""The contract of a script's SASL mechanisms: what ``check_mechanisms`` lets through."""

from __future__ import annotations

import pytest

from mailwarden.auth.custom import (
    Challenge,
    MechanismTableError,
    Success,
    check_mechanisms,
    safe_in_clear,
)


class Good:
    async def step(self, conn: object, response: bytes | None) -> Challenge | Success:
        return Success("x") if response else Challenge(b"")


class Clear(Good):
    safe_in_clear = True


class Sync:
    def step(self, conn: object, response: bytes | None) -> Success:
        return Success("x")


class NeedsArguments(Good):
    def __init__(self, users: dict[str, str]) -> None:
        self.users = users


class WrongStep:
    async def step(self, response: bytes | None) -> Success:
        return Success("x")


class BadFlag(Good):
    safe_in_clear = "yes"


def test_names_are_upper_cased_and_flags_read() -> None:
    table = check_mechanisms({"cram-md5": Good, "X-TOTP": Clear})
    assert table == {"CRAM-MD5": Good, "X-TOTP": Clear}
    assert not safe_in_clear(table["CRAM-MD5"]) and safe_in_clear(table["X-TOTP"])


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ([Good], "must be a dict"),
        ({"PLAIN": Good}, "PLAIN is built in"),
        ({"external": Good}, "EXTERNAL is built in"),
        ({"NOT A NAME": Good}, "not a SASL mechanism name"),
        ({"X" * 21: Good}, "not a SASL mechanism name"),
        ({"X-A": Good, "x-a": Good}, "declared twice"),
        ({"X-A": Good()}, "must be a class"),
        ({"X-A": Sync}, "needs async def step"),
        ({"X-A": NeedsArguments}, "must take no arguments"),
        ({"X-A": WrongStep}, "takes 2 parameters"),
        ({"X-A": BadFlag}, "safe_in_clear must be True or False"),
    ],
)
def test_bad_tables_say_what_is_wrong(table: object, problem: str) -> None:
    with pytest.raises(MechanismTableError) as caught:
        check_mechanisms(table)
    assert problem in str(caught.value)
