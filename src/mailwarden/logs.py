"""Logging for the node: one line per event on stderr, cheap enough for a line per message.

The standard StreamHandler writes (and flushes) every record on its own, one system call each,
and formats the time afresh each time; with a line per accepted message that cost a tenth of the
receiving throughput. Here lines are buffered and written together: at once for WARNING and
above, else when 64 KiB have gathered or at the next tick of the event loop's flusher (a fifth of
a second). A crash can lose at most that last fraction of a second of INFO lines, never a
warning or an error, and never mail: the spool does not depend on the log.
"""

from __future__ import annotations

import logging
import os
import sys
import time

FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"
FLUSH_INTERVAL = 0.2
_FLUSH_BYTES = 64 * 1024


class SecondCachedFormatter(logging.Formatter):
    """The usual format; the date part of ``asctime`` is computed once per second."""

    def __init__(self, fmt: str = FORMAT) -> None:
        super().__init__(fmt)
        self._second = -1
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        return f"{self._stamp},{int(record.msecs):03d}"


class BufferedStderrHandler(logging.Handler):
    """Collects formatted lines and writes them to file descriptor ``fd`` in batches.

    Failure behaviour: a failed write drops that batch and reports through logging's own
    ``handleError`` (stderr gone, disk full); it never raises into the caller.
    """

    def __init__(self, fd: int = 2) -> None:
        super().__init__()
        self._fd = fd
        self._lines: list[str] = []
        self._size = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
        except Exception:
            self.handleError(record)
            return
        self._lines.append(line)
        self._size += len(line)
        if record.levelno >= logging.WARNING or self._size >= _FLUSH_BYTES:
            self._write()

    def flush(self) -> None:
        self.acquire()
        try:
            self._write()
        finally:
            self.release()

    def _write(self) -> None:
        if not self._lines:
            return
        data = "".join(self._lines).encode("utf-8", "replace")
        self._lines.clear()
        self._size = 0
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError:
            self.handleError(logging.makeLogRecord({"msg": "log write failed"}))


def configure(level: str) -> BufferedStderrHandler:
    """Send the root logger to a buffered stderr handler at ``level``; returns the handler
    so the event loop can flush it periodically."""
    handler = BufferedStderrHandler(sys.stderr.fileno())
    handler.setFormatter(SecondCachedFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    return handler


def flush_all() -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()
