"""Our I2OSP/OS2IP for dkimpy's RSA give exactly what dkimpy's own conversions give."""

from __future__ import annotations

import dkim.crypto
from hypothesis import given
from hypothesis import strategies as st

from mailwarden.lib import dkim as lib_dkim  # noqa: F401  (installs the conversions)
from mailwarden.lib import dkim_crypto


@given(st.integers(min_value=0, max_value=1 << 4200), st.integers(min_value=-1, max_value=600))
def test_int2str_matches_dkimpy(n: int, length: int) -> None:
    assert dkim_crypto.int2str(n, length) == dkim_crypto.DKIMPY_INT2STR(n, length)
    assert type(dkim_crypto.int2str(n, length)) is bytearray


@given(st.binary(max_size=600))
def test_str2int_matches_dkimpy(data: bytes) -> None:
    assert dkim_crypto.str2int(data) == dkim_crypto.DKIMPY_STR2INT(data)


def test_dkimpy_uses_them_once_the_library_is_imported() -> None:
    assert dkim.crypto.int2str is dkim_crypto.int2str
    assert dkim.crypto.str2int is dkim_crypto.str2int
