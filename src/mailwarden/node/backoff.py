"""When to restart a worker that died: pure decisions from its death history."""

from __future__ import annotations

# Restarting a worker that died: the first after BACKOFF_FIRST seconds, doubling for each
# further death up to BACKOFF_MAX; a worker that stayed up STABLE_AFTER seconds starts over.
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 60.0
STABLE_AFTER = 30.0
# Deaths beyond this count no longer double anything: 0.5 * 2**64 s is far past the cap.
_CAPPED_EXPONENT = 64


def restart_delay(deaths: int) -> float:
    """Seconds to wait before the next start of a worker after ``deaths`` quick deaths (or
    failed forks) in a row: 0.5, 1, 2, 4 … up to BACKOFF_MAX."""
    # The exponent stops growing once the cap is reached: 2**deaths for a worker that has
    # failed for a day (~1,400 deaths) no longer fits a float, and the OverflowError would end
    # the supervisor.
    return min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** min(deaths, _CAPPED_EXPONENT))


def deaths_before(deaths: int, was_ready: bool, uptime: float) -> int:
    """The count of quick deaths in a row that a death follows: none when the worker had
    reported ready and then served STABLE_AFTER seconds (it was healthy, this is a new
    problem), else ``deaths`` as counted so far."""
    if was_ready and uptime >= STABLE_AFTER:
        return 0
    return deaths
