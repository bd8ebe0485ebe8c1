"""Logging for the node: one line per event on stderr, cheap enough for a line per message.

The standard StreamHandler writes (and flushes) every record on its own, one system call each,
and formats the time afresh each time; with a line per accepted message that cost a tenth of the
receiving throughput. Here lines are buffered and written together: at once for WARNING and
above, else when 64 KiB have gathered or at the next tick of the event loop's flusher (a fifth of
a second). A crash can lose at most that last fraction of a second of INFO lines, never a
warning or an error, and never mail: the spool does not depend on the log.

Two line formats (``[node] log_format``): the text above, or one JSON object per line
(:class:`JsonFormatter`) carrying the worker and, inside an SMTP session, the connection and
transaction ids. The ids come from context variables the session sets in its own task (so a
script's log lines inside a hook carry them too), or from ``extra={"conn": …, "tx": …}`` where
a line is written outside the session's task.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from contextvars import ContextVar
from json.encoder import encode_basestring_ascii as _json_string

FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"
FLUSH_INTERVAL = 0.2
_FLUSH_BYTES = 64 * 1024

# The SMTP session's ids, set in the session's task (each task has its own copy of the context,
# so concurrent sessions never see each other's).
CONNECTION: ContextVar[str | None] = ContextVar("mailwarden_connection", default=None)
TRANSACTION: ContextVar[str | None] = ContextVar("mailwarden_transaction", default=None)

# The format configure() chose; None before it ran (a command that is not the node).
_line_format: str | None = None

# This process's worker index as JSON: "null" in a supervisor, set by each worker at start.
_worker = "null"


def set_worker(index: int | None) -> None:
    """Name the worker this process is, for the ``worker`` field of JSON lines."""
    global _worker
    _worker = "null" if index is None else str(int(index))


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


class JsonFormatter(logging.Formatter):
    """One JSON object per record, built as one string (no dict, no ``json.dumps`` of a dict):
    ``time`` (RFC 3339, UTC, milliseconds), ``level``, ``logger``, ``pid``, ``worker``,
    ``message``, then ``conn`` and ``tx`` when there are ones and ``traceback`` for an exception.
    Strings are escaped to ASCII, so no client-supplied byte can end or forge a line."""

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._stamp = ""

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        fields = record.__dict__
        line = (
            f'{{"time":"{self._stamp}.{int(record.msecs):03d}Z","level":"{record.levelname}",'
            f'"logger":{_json_string(record.name)},"pid":{record.process},"worker":{_worker},'
            f'"message":{_json_string(record.getMessage())}'
        )
        conn = fields.get("conn") or CONNECTION.get()
        if conn is not None:
            line += f',"conn":{_json_string(str(conn))}'
        tx = fields.get("tx") or TRANSACTION.get()
        if tx is not None:
            line += f',"tx":{_json_string(str(tx))}'
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        trace = record.exc_text or ""
        if record.stack_info:
            trace = f"{trace}\n{self.formatStack(record.stack_info)}".lstrip("\n")
        if trace:
            line += f',"traceback":{_json_string(trace)}'
        return line + "}"


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


def configure(level: str, line_format: str = "text") -> BufferedStderrHandler:
    """Send the root logger to a buffered stderr handler at ``level``, writing ``line_format``
    ("text" or "json") lines; returns the handler so the event loop can flush it periodically.
    Raises ValueError for another format (the configuration allows only these two)."""
    if line_format not in ("text", "json"):
        raise ValueError(f"log format must be text or json, not {line_format!r}")
    global _line_format
    _line_format = line_format
    handler = BufferedStderrHandler(sys.stderr.fileno())
    handler.setFormatter(JsonFormatter() if line_format == "json" else SecondCachedFormatter())
    if line_format == "json":
        # Python's warnings would otherwise be written to stderr as bare text lines.
        logging.captureWarnings(True)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    return handler


def line_format() -> str | None:
    """The format :func:`configure` chose in this process ("text" or "json"), else None."""
    return _line_format


def flush_all() -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()
