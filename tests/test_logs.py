"""The node's buffered log handler: INFO lines wait for a flush, warnings go out at once."""

from __future__ import annotations

import logging
import os

from mailwarden.logs import BufferedStderrHandler, SecondCachedFormatter


def read_available(fd: int) -> bytes:
    os.set_blocking(fd, False)
    try:
        return os.read(fd, 1 << 20)
    except BlockingIOError:
        return b""


def make_logger(fd: int) -> tuple[logging.Logger, BufferedStderrHandler]:
    handler = BufferedStderrHandler(fd)
    handler.setFormatter(SecondCachedFormatter())
    logger = logging.getLogger(f"test-logs-{fd}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    return logger, handler


def test_info_lines_wait_for_flush_and_keep_their_order() -> None:
    read_end, write_end = os.pipe()
    logger, handler = make_logger(write_end)
    try:
        logger.info("first %d", 1)
        logger.info("second")
        assert read_available(read_end) == b""
        handler.flush()
        lines = read_available(read_end).decode().splitlines()
        assert [line.split(": ", 1)[1] for line in lines] == ["first 1", "second"]
        assert all(" INFO test-logs-" in line for line in lines)
    finally:
        logger.removeHandler(handler)
        os.close(read_end)
        os.close(write_end)


def test_a_warning_writes_everything_buffered_at_once() -> None:
    read_end, write_end = os.pipe()
    logger, handler = make_logger(write_end)
    try:
        logger.info("queued")
        logger.error("spool write failed")
        text = read_available(read_end).decode()
        assert text.index("queued") < text.index("spool write failed")
    finally:
        logger.removeHandler(handler)
        os.close(read_end)
        os.close(write_end)


def test_timestamp_has_date_time_and_milliseconds() -> None:
    formatter = SecondCachedFormatter()
    record = logging.makeLogRecord({"msg": "x", "created": 1_800_000_000.123, "msecs": 123.0})
    stamp = formatter.formatTime(record)
    assert stamp.endswith(",123") and len(stamp) == len("2027-01-15 08:00:00,123")
    later = logging.makeLogRecord({"msg": "y", "created": 1_800_000_000.9, "msecs": 900.0})
    assert formatter.formatTime(later) == stamp[:-3] + "900"
