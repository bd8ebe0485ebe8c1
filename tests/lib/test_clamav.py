"""clamav.scan against a real clamd (Debian's clamav-daemon, a one-signature test database):
clean and infected messages over TCP and a unix socket, the message as edited, the stream
limit, a daemon that is down, one that hangs and one that answers garbage."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from tests.support.scanners import (
    CLAMD_SIGNATURE,
    CLAMD_STREAM_MAX,
    EICAR,
    ClamdServer,
    answering,
    as_message,
    build,
    closed_port,
    silent_server,
)

from mailwarden.config.library import LibrarySettings
from mailwarden.lib import ScannerError, backends, clamav, scanners

# clamd names a signature from an unsigned database with this suffix.
FOUND = f"{CLAMD_SIGNATURE}.UNOFFICIAL"


@pytest.fixture(params=["tcp", "unix"])
def address(request: pytest.FixtureRequest, clamd: ClamdServer) -> str:
    return clamd.address if request.param == "tcp" else str(clamd.socket_path)


async def test_clean_message_is_clean(address: str) -> None:
    result = await clamav.scan(as_message(build("Nothing to see here.")), address=address)
    assert result == clamav.ClamResult(clean=True, virus=None)


async def test_eicar_attachment_is_found_by_name(address: str) -> None:
    result = await clamav.scan(as_message(build("See attached.", EICAR)), address=address)
    assert not result.clean
    assert result.virus == FOUND


async def test_raw_bytes_are_scanned_too(clamd: ClamdServer) -> None:
    assert (await clamav.scan(build("hi", EICAR), address=clamd.address)).virus == FOUND
    assert (await clamav.scan(build("hi"), address=clamd.address)).clean


async def test_the_message_as_edited_is_scanned(clamd: ClamdServer) -> None:
    message = as_message(build("See attached.", EICAR))
    assert not (await clamav.scan(message, address=clamd.address)).clean
    await message.remove_part("2")  # the script strips the attachment
    assert (await clamav.scan(message, address=clamd.address)).clean


async def test_virus_past_the_first_chunks_is_found(clamd: ClamdServer) -> None:
    # Many INSTREAM chunks (64 KiB each): the signature sits well after the first ones.
    filler = ("All work and no play makes Jack a dull boy.\n" * 8000).strip()
    raw = build(filler, EICAR)
    assert len(raw) > 5 * scanners.CHUNK_SIZE
    assert (await clamav.scan(as_message(raw), address=clamd.address)).virus == FOUND
    assert (await clamav.scan(as_message(build(filler)), address=clamd.address)).clean


@pytest.mark.parametrize("times", [1.1, 8])
async def test_message_over_stream_max_length_is_refused(address: str, times: float) -> None:
    # Far over the limit clamd closes while we are still sending: its answer must still win
    # over the broken pipe, every time.
    line = b"x" * 998 + b"\r\n"
    raw = build("hi") + line * int(times * CLAMD_STREAM_MAX / len(line))
    for _ in range(3):
        with pytest.raises(scanners.ScannerRefused) as refused:
            await clamav.scan(as_message(raw), address=address)
        assert "size limit exceeded" in str(refused.value)
        assert "StreamMaxLength" in str(refused.value)
        assert isinstance(refused.value, ScannerError)
        assert refused.value.scanner == "clamd" and refused.value.address == address


async def test_daemon_down_is_a_scanner_error(tmp_path: Path) -> None:
    down = closed_port()
    with pytest.raises(scanners.ScannerUnavailable, match="cannot connect") as caught:
        await clamav.scan(build("hi"), address=down)
    assert caught.value.address == down
    with pytest.raises(ScannerError, match="cannot connect"):
        await clamav.scan(build("hi"), address=str(tmp_path / "no-such.sock"))


async def test_silent_daemon_times_out_within_the_timeout() -> None:
    with silent_server() as address:
        started = time.monotonic()
        with pytest.raises(scanners.ScannerTimeout, match=r"no verdict within 0\.5s"):
            await clamav.scan(build("hi"), address=address, timeout=0.5)
        assert time.monotonic() - started < 2


async def test_garbage_answer_is_a_protocol_error() -> None:
    async with answering(b"HTTP/1.1 400 Bad Request\r\n\r\n") as address:
        with pytest.raises(scanners.ScannerProtocolError, match="not a clamd verdict"):
            await clamav.scan(build("hi"), address=address)
    async with answering(b"") as address:
        with pytest.raises(scanners.ScannerUnavailable, match="without a verdict"):
            await clamav.scan(build("hi"), address=address)


async def test_address_and_timeout_come_from_library_settings(
    clamd: ClamdServer, tmp_path: Path
) -> None:
    settings = LibrarySettings(clamd_address=str(clamd.socket_path), scanner_timeout=5.0)
    backends.configure(settings, tmp_path)
    try:
        assert (await clamav.scan(build("hi", EICAR))).virus == FOUND
    finally:
        scanners.configure(None)
    # Back to Debian's default socket, which is not running here.
    assert scanners.settings().clamd_address == "/var/run/clamav/clamd.ctl"


async def test_bad_arguments_are_the_scripts_bug() -> None:
    with pytest.raises(ValueError, match="host:port or a unix socket path"):
        await clamav.scan(build("hi"), address="localhost")
    with pytest.raises(ValueError, match="timeout"):
        await clamav.scan(build("hi"), address="127.0.0.1:3310", timeout=0)
    with pytest.raises(TypeError, match="message or bytes"):
        await clamav.scan("text", address="127.0.0.1:3310")  # type: ignore[arg-type]


@given(st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), min_size=1))
def test_verdict_lines_parse_back(name: str) -> None:
    name = name.strip()
    assume(name and not name.endswith((" FOUND", " ERROR")))
    reply = f"stream: {name} FOUND\0".encode()
    assert clamav.parse_reply(reply, "test") == clamav.ClamResult(clean=False, virus=name)


@given(st.binary(max_size=300))
def test_any_answer_is_a_verdict_or_a_scanner_error(reply: bytes) -> None:
    try:
        result = clamav.parse_reply(reply, "test")
    except ScannerError:
        return
    assert result.clean == (result.virus is None)
