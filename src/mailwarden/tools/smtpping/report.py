"""Text and JSON output, in smtpping 1.1's words where 1.1 has words for it."""

from __future__ import annotations

import json
from typing import Any

from .result import TIMEOUT_CODE, PingResult
from .stats import PHASES, RunStats

MARK_NAMES = PHASES[1:]  # banner .. quit, as in PingResult.marks


def header_line(recipient: str, address: str, port: str, size: int) -> str:
    return f"PING {recipient} ([{address}]:{port}): {size} bytes (SMTP DATA)\n"


def ping_line(seq: int, result: PingResult) -> str:
    marks = result.marks
    connect = (result.connect_ns or 0) / 1e6
    return (
        f"seq={seq}, connect={connect:.2f} ms, helo={marks[1] / 1e6:.2f} ms, "
        f"mailfrom={marks[2] / 1e6:.2f} ms, rcptto={marks[3] / 1e6:.2f} ms, "
        f"datasent={marks[5] / 1e6:.2f} ms, quit={marks[6] / 1e6:.2f} ms\n"
    )


def error_line(seq: int, address: str, result: PingResult) -> str:
    """The stderr line 1.1 prints for a failed ping (extended for TLS and AUTH)."""
    failure = result.failure
    if failure == "connect":
        return f"seq={seq}: connect() failed {address}\n"
    if failure == "bind":
        return f"seq={seq}: bind() failed\n"
    if failure == "TLS":
        return f"seq={seq}: tls: handshake failed ({result.detail or 'closed'})\n"
    code = "timeout" if result.code == TIMEOUT_CODE else str(result.code)
    return f"seq={seq}: recv: {failure} failed ({code})\n"


def error_key(result: PingResult) -> str:
    """How a failure is counted in summaries: the reply code, or what went wrong."""
    if result.failure in ("connect", "bind", "TLS"):
        return str(result.failure).lower()
    if result.code == TIMEOUT_CODE:
        return "timeout"
    if result.code == 0:
        return "closed"
    return str(result.code)


def statistics_block(address: str, transmitted: int, stats: RunStats) -> str:
    lines = [
        "",
        f"--- {address} SMTP ping statistics ---",
        f"{transmitted} e-mail messages transmitted",
    ]
    for name in PHASES:
        phase = stats.phases[name]
        lines.append(
            f"{name} min/avg/max = {phase.min_ms:.2f}/{phase.mean_ms:.2f}/{phase.max_ms:.2f} ms"
        )
    return "\n".join(lines) + "\n"


NO_PINGS = "\n--- no pings were sent ---\n"


def percentile_block(stats: RunStats) -> str:
    lines = []
    for name in PHASES:
        phase = stats.phases[name]
        lines.append(
            f"{name} p50/p90/p99 = {phase.percentile_ms(0.5):.2f}/{phase.percentile_ms(0.9):.2f}/"
            f"{phase.percentile_ms(0.99):.2f} ms, stddev = {phase.stddev_ms:.2f} ms"
        )
    return "\n".join(lines) + "\n"


def rate_summary(stats: RunStats, elapsed_s: float) -> str:
    rate = stats.completed / elapsed_s if elapsed_s > 0 else 0.0
    errors = ", ".join(f"{key} x{count}" for key, count in sorted(stats.errors.items()))
    return (
        "\n--- rate summary ---\n"
        f"{stats.completed} messages completed in {elapsed_s:.2f} s, mean rate {rate:.1f} msg/s\n"
        f"errors: {errors or 'none'}\n"
    )


def ping_json(worker: int, seq: int, address: str, port: str, result: PingResult) -> str:
    record: dict[str, Any] = {
        "type": "ping",
        "worker": worker,
        "seq": seq,
        "address": address,
        "port": port,
        "ok": result.ok,
        "connect_ms": None if result.connect_ns is None else round(result.connect_ns / 1e6, 3),
    }
    for index, name in enumerate(MARK_NAMES):
        marks = result.marks
        record[f"{name}_ms"] = round(marks[index] / 1e6, 3) if index < len(marks) else None
    record["eom_code"] = result.eom_code
    record["error"] = None if result.ok else {"step": result.failure, "code": result.code}
    if not result.ok:
        record["error"]["key"] = error_key(result)
    return json.dumps(record, separators=(",", ":")) + "\n"


def summary_json(address: str | None, transmitted: int, stats: RunStats, elapsed_s: float) -> str:
    record = {
        "type": "summary",
        "address": address,
        "transmitted": transmitted,
        "completed": stats.completed,
        "failed": stats.failed,
        "elapsed_s": round(elapsed_s, 3),
        "rate_per_s": round(stats.completed / elapsed_s, 1) if elapsed_s > 0 else 0.0,
        "errors": dict(sorted(stats.errors.items())),
        "phases": {name: stats.phases[name].summary() for name in PHASES},
    }
    return json.dumps(record, separators=(",", ":")) + "\n"


def rate_json(second: int, completed: int) -> str:
    return json.dumps({"type": "rate", "second": second, "completed": completed}) + "\n"
