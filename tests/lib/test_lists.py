"""``mailwarden.lib.lists``: address, domain and IP/CIDR lists from files, reloaded on change."""

from __future__ import annotations

import ipaddress
import logging
import os
from pathlib import Path

import pytest

from mailwarden.lib import load_list
from mailwarden.lib.lists import ListError


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --- addresses -------------------------------------------------------------------------------

ADDRESSES = """\
# senders we refuse
spammer@bulk.example      # a comment after the entry
Info@Shop.Example
partner.example
.spam.example
abuse@

"""


@pytest.mark.parametrize(
    "value",
    [
        "spammer@bulk.example",
        "SPAMMER@Bulk.Example",  # case-insensitive, local part included by default
        "info@shop.example",
        "anyone@partner.example",
        "x@mx.spam.example",
        "x@a.b.spam.example",
        "abuse@anywhere.example",
        "ABUSE@elsewhere.example",
    ],
)
def test_address_list_members(tmp_path: Path, value: str) -> None:
    assert value in load_list(write(tmp_path / "senders", ADDRESSES), "address")


@pytest.mark.parametrize(
    "value",
    [
        "",  # the null sender
        "spammer",  # no domain
        "someone@spam.example",  # ".spam.example" is subdomains only
        "spammer@bulk.example.org",
        "x@sub.partner.example",  # "partner.example" is that domain only
        "other@bulk.example",
        "# senders we refuse",
    ],
)
def test_address_list_non_members(tmp_path: Path, value: str) -> None:
    assert value not in load_list(write(tmp_path / "senders", ADDRESSES), "address")


def test_case_sensitive_local_parts_when_asked(tmp_path: Path) -> None:
    lst = load_list(write(tmp_path / "a", "Info@Shop.Example\n"), case_sensitive_local=True)
    assert "Info@shop.example" in lst
    assert "info@Shop.Example" not in lst
    assert len(lst) == 1


# --- domains ---------------------------------------------------------------------------------


def test_domain_list_exact_and_leading_dot_subdomains(tmp_path: Path) -> None:
    lst = load_list(write(tmp_path / "d", "Example.org\n.example.net\n"), "domain")
    assert "example.org" in lst
    assert "EXAMPLE.ORG." in lst  # a trailing root dot is the same domain
    assert "user@example.org" in lst  # an address is looked up by its domain
    assert "mx.example.org" not in lst
    assert "mx.example.net" in lst
    assert "a.b.c.example.net" in lst
    assert "example.net" not in lst
    assert "badexample.net" not in lst
    assert "" not in lst
    assert len(lst) == 2


# --- IPs and networks ------------------------------------------------------------------------

IPS = """\
198.51.100.0/24
203.0.113.7
2001:db8:bad::/48
::1
"""


@pytest.mark.parametrize(
    "value",
    [
        "198.51.100.0",
        "198.51.100.255",
        "203.0.113.7",
        "::ffff:198.51.100.200",  # an IPv4 client on a dual-stack socket
        "2001:db8:bad::25",
        "2001:db8:bad:ffff:ffff:ffff:ffff:ffff",
        "::1",
        ipaddress.ip_address("203.0.113.7"),
    ],
)
def test_ip_list_members(tmp_path: Path, value: object) -> None:
    assert value in load_list(write(tmp_path / "ips", IPS), "ip")


@pytest.mark.parametrize(
    "value", ["198.51.101.0", "203.0.113.8", "2001:db8:bae::1", "::2", "not-an-ip", "", None]
)
def test_ip_list_non_members(tmp_path: Path, value: object) -> None:
    assert value not in load_list(write(tmp_path / "ips", IPS), "ip")


# --- malformed files -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "text", "why"),
    [
        ("ip", "192.0.2.1\n\n192.0.2.300\n", "does not appear to be an IPv4 or IPv6"),
        ("ip", "# x\n192.0.2.1/24\n", r"host bits set; did you mean 192\.0\.2\.0/24\?"),
        ("domain", "ok.example\nbad..example\n", "is not a domain name"),
        ("domain", "a.example\n-a.example\n", "is not a domain name"),
        ("address", "a@b.example\n@b.example\n", "empty local part"),
        ("address", "a@b.example\nuser@exa mple.org\n", "one entry per line"),
        ("address", "x\nuser@.example.org\n", "a domain cannot start with"),
    ],
)
def test_malformed_line_is_an_error_naming_file_and_line(
    tmp_path: Path, kind: str, text: str, why: str
) -> None:
    path = write(tmp_path / "list.txt", text)
    line = text.count("\n") if text.endswith("\n") else text.count("\n") + 1
    with pytest.raises(ListError, match=rf"^{path}:{line}: .*{why}"):
        load_list(path, kind)  # type: ignore[arg-type]


def test_unknown_kind_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="kind must be"):
        load_list(write(tmp_path / "x", ""), "cidr")  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError):
        load_list(tmp_path / "missing", "ip")


# --- reloading -------------------------------------------------------------------------------


def test_list_reloads_when_the_file_changes(tmp_path: Path) -> None:
    path = write(tmp_path / "ips", "192.0.2.1\n")
    lst = load_list(path, "ip", check_interval=0)
    assert "192.0.2.1" in lst
    write(path, "192.0.2.2\n")  # same size: the mtime (and here the inode) tell
    os.utime(path, ns=(1, 1))
    assert "192.0.2.2" in lst
    assert "192.0.2.1" not in lst
    # Replaced by a rename, as editors and deploy tools do.
    write(tmp_path / "new", "192.0.2.3\n")
    os.replace(tmp_path / "new", path)
    assert "192.0.2.3" in lst
    assert "192.0.2.2" not in lst


def test_file_is_not_read_again_within_the_check_interval(tmp_path: Path) -> None:
    path = write(tmp_path / "d", "a.example\n")
    lst = load_list(path, "domain", check_interval=3600)
    write(path, "b.example\n")
    assert "a.example" in lst
    assert "b.example" not in lst
    lst.reload()  # explicit
    assert "b.example" in lst


def test_a_file_that_becomes_malformed_keeps_the_previous_entries_and_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path / "senders", "spammer@bulk.example\n")
    lst = load_list(path, check_interval=0)
    write(path, "spammer@bulk.example\nnew@bulk.example\nbroken@\x20x y\n")
    with caplog.at_level(logging.ERROR, logger="mailwarden.lib"):
        assert "spammer@bulk.example" in lst
        assert "new@bulk.example" not in lst  # all or nothing
        assert "spammer@bulk.example" in lst
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1  # once per change of the file, not once per lookup
    assert f"{path}:3: one entry per line" in errors[0]
    assert "keeping the previous entries" in errors[0]
    # Fixed: picked up again.
    write(path, "new@bulk.example\n")
    assert "new@bulk.example" in lst
    assert "spammer@bulk.example" not in lst


def test_a_deleted_file_keeps_the_previous_entries(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path / "d", "a.example\n")
    lst = load_list(path, "domain", check_interval=0)
    path.unlink()
    with caplog.at_level(logging.ERROR, logger="mailwarden.lib"):
        assert "a.example" in lst
        assert "a.example" in lst
    assert sum("cannot stat" in r.getMessage() for r in caplog.records) == 1
    write(path, "b.example\n")
    assert "b.example" in lst
