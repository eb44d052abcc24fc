"""The retry policy: when a failed attempt runs again. Pure: the clock and the jitter are passed in.

A failed attempt with attempts left becomes `retryable` at the time computed
here (ledger.job_fail in schema.sql records it in the `failed` event and the
fold makes the job retryable); with none left the database discards it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

__all__ = ["Backoff", "backoff", "retry_at"]

Backoff = Callable[[int], float]
"""A kind's own policy: seconds to wait after failed attempt n."""

MAX_DELAY = 86_400.0
"""A day: the longest the default waits between attempts."""
JITTER = 0.1
"""Up to 10% more, so a burst of failures does not retry in lockstep."""


def backoff(attempt: int, jitter: float) -> timedelta:
    """The default delay after failed attempt `attempt`: attempt^4 + 1 seconds, capped at a day, plus jitter.

    `jitter` in [0, 1) picks where in the 10% band the delay falls. 25
    attempts (the default budget) span about eleven days: the first 17 waits take 3.8, the rest a day each.
    """
    seconds = min(max(attempt, 1) ** 4 + 1, MAX_DELAY)
    return timedelta(seconds=seconds * (1 + JITTER * jitter))


def retry_at(attempt: int, now: datetime, jitter: float, policy: Backoff | None = None) -> datetime:
    """When failed attempt `attempt` runs again: now plus the kind's policy, or the default backoff."""
    if policy is not None:
        return now + timedelta(seconds=policy(attempt))
    return now + backoff(attempt, jitter)
