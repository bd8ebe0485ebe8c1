"""One -P worker's walk, the same for the raw-socket engine and the asyncio path.

Each worker behaves like one 1.1 process: it walks the address list until one
accepts a TCP connection, prints its own PING header and numbers its own pings,
and sends -c messages (so -P 4 -c 10 sends 40, as in 1.1). A driver asks
``next_ping()`` for a target, runs the ping, hands the result to ``ping_done()``
and waits the pause it returns before asking again; ``None`` ends the worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .options import Options
    from .result import PingResult, SessionPlan
    from .timekeeper import Timekeeper

NEVER_CONNECTED = ("connect", "bind")


@dataclass(slots=True)
class WorkerOutcome:
    """Where a worker ended up: the address it pinged (None if none) and its last seq."""

    address: str | None = None
    seq: int = 0


@dataclass(slots=True)
class Target:
    address: str
    family: int
    sockaddr: tuple[object, ...]


class RunView(Protocol):
    """What workers and drivers need from their run (``runner.Run`` is one).

    A protocol, so that neither the drivers nor this module import the runner,
    which chooses and imports the drivers.
    """

    options: Options
    plan: SessionPlan
    addresses: list[str]

    def target(self, address: str) -> Target | None: ...
    def announce(self, address: str) -> None: ...
    def report(self, worker: int, seq: int, address: str, result: PingResult) -> None: ...


class WorkerCursor:
    """Which address a worker pings next, its seq number, and when it is done."""

    __slots__ = (
        "_addresses",
        "_clock",
        "_count",
        "_target",
        "_wait_s",
        "index",
        "outcome",
        "run",
        "seq",
    )

    def __init__(self, run: RunView, index: int, clock: Timekeeper) -> None:
        self.run = run
        self._clock = clock  # only its stop flag
        self.index = index
        self.seq = 0
        self.outcome = WorkerOutcome()
        self._addresses = iter(run.addresses)
        self._count = run.options.count  # 0: no limit
        self._wait_s = run.options.wait_ms / 1000
        self._target: Target | None = None

    def _count_reached(self) -> bool:
        return self._count > 0 and self.seq >= self._count

    def next_ping(self) -> Target | None:
        """The target of the next ping, or None when this worker has finished."""
        run = self.run
        target = self._target
        if target is not None:
            if self.seq > 0:
                if self._clock.stopping or self._count_reached():
                    return self._finish(target.address)
                self.seq += 1
                return target
            self._target = None  # never connected here: 1.1 moves on to the next address
        for address in self._addresses:
            target = run.target(address)
            if target is None:
                continue
            run.announce(address)
            if self._clock.stopping:
                continue  # as 1.1: stopped before the first ping, each header is still printed
            self._target = target
            return target
        return self._finish(None)

    def _finish(self, address: str | None) -> None:
        if address is not None:
            self.outcome.address, self.outcome.seq = address, self.seq
        return None

    def ping_done(self, result: PingResult) -> float:
        """Count and print one ping; returns how long to wait before ``next_ping()``.

        The first connection on an address makes seq 1; -w applies between pings
        to one address, not before moving on or stopping.
        """
        if self.seq == 0 and result.failure not in NEVER_CONNECTED:
            self.seq = 1
        run = self.run
        run.report(self.index, self.seq, self._target.address, result)  # type: ignore[union-attr]
        stopping = self._clock.stopping
        if self.seq == 0 or stopping or self._count_reached() or not self._wait_s:
            return 0.0
        return self._wait_s
