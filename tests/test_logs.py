"""The node's buffered log handler: INFO lines wait for a flush, warnings go out at once."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailwarden.logs import (
    CONNECTION,
    TRANSACTION,
    BufferedStderrHandler,
    JsonFormatter,
    SecondCachedFormatter,
    configure,
    set_worker,
)


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


def json_line(record: logging.LogRecord, formatter: JsonFormatter | None = None) -> dict:
    line = (formatter or JsonFormatter()).format(record)
    assert "\n" not in line and "\r" not in line
    return json.loads(line)


@given(message=st.text(), name=st.text(min_size=1))
def test_any_message_is_one_json_line_that_reads_back(message: str, name: str) -> None:
    # Client-supplied text (CR LF, quotes, controls, non-ASCII, lone surrogates from
    # surrogateescape) can neither end the line nor break the object.
    record = logging.makeLogRecord(
        {"msg": "%s", "args": (message,), "name": name, "levelname": "INFO"}
    )
    fields = json_line(record)
    assert fields["message"] == message and fields["logger"] == name
    assert fields["level"] == "INFO" and "conn" not in fields and "tx" not in fields
    assert fields["time"].endswith("Z") and fields["worker"] is None
    assert line_is_ascii(JsonFormatter().format(record))


def line_is_ascii(line: str) -> bool:
    return all(ord(char) < 128 for char in line)


def test_time_is_utc_with_milliseconds_and_worker_is_this_processes() -> None:
    record = logging.makeLogRecord(
        {"msg": "x", "name": "n", "created": 1_800_000_000.123, "msecs": 123.0}
    )
    set_worker(3)
    try:
        fields = json_line(record)
    finally:
        set_worker(None)
    assert fields["time"] == "2027-01-15T08:00:00.123Z"
    assert fields["worker"] == 3


def test_each_task_logs_its_own_ids() -> None:
    """Two sessions interleaved on one loop: each line has the ids of the task that wrote it."""
    lines: list[str] = []

    class Keep(logging.Handler):
        # Formats in the caller's context, as the buffered handler does.
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    logger = logging.getLogger("test-logs-context")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = Keep()
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)

    async def session(conn: str, tx: str) -> None:
        CONNECTION.set(conn)
        logger.info("before %s", conn)
        await asyncio.sleep(0)
        TRANSACTION.set(tx)
        await asyncio.sleep(0)
        logger.info("in %s", tx)

    async def both() -> None:
        await asyncio.gather(session("c1", "t1"), session("c2", "t2"))
        logger.info("outside")

    try:
        asyncio.run(both())
    finally:
        logger.removeHandler(handler)
    by_message = {fields["message"]: fields for fields in map(json.loads, lines)}
    assert by_message["before c1"]["conn"] == "c1" and "tx" not in by_message["before c1"]
    assert (by_message["in t1"]["conn"], by_message["in t1"]["tx"]) == ("c1", "t1")
    assert (by_message["in t2"]["conn"], by_message["in t2"]["tx"]) == ("c2", "t2")
    assert "conn" not in by_message["outside"] and "tx" not in by_message["outside"]


def test_explicit_ids_and_a_traceback() -> None:
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        record = logging.LogRecord("n", logging.ERROR, "f", 1, "failed", None, sys.exc_info())
    record.conn, record.tx = "c9", "t9"
    fields = json_line(record)
    assert (fields["conn"], fields["tx"], fields["level"]) == ("c9", "t9", "ERROR")
    assert fields["traceback"].startswith("Traceback (most recent call last):")
    assert fields["traceback"].endswith("ValueError: bad\nthing")


def test_configure_refuses_an_unknown_format() -> None:
    with pytest.raises(ValueError, match="text or json"):
        configure("info", "xml")
