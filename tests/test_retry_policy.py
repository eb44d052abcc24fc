"""The retry policy, a pure function: its delays, their bounds and jitter, and the executor that applies it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import anyio
import pytest

from ledger.kinds import JobContext, NoArgs, Registry
from ledger.models import Job
from ledger.retry_policy import backoff, retry_at
from ledger.states import JobState
from ledger.worker.executor import execute

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def test_the_default_backoff_grows_as_the_fourth_power_of_the_attempt() -> None:
    assert [backoff(n, 0).total_seconds() for n in (1, 2, 3, 5, 10)] == [2, 17, 82, 626, 10_001]


def test_the_default_backoff_is_capped_at_a_day_and_spans_about_eleven_days_over_25_attempts() -> None:
    assert backoff(1000, 0) == timedelta(days=1)
    total = sum((backoff(n, 0) for n in range(1, 25)), timedelta())  # the 24 waits between 25 attempts
    assert timedelta(days=10) < total < timedelta(days=12)


@pytest.mark.parametrize("attempt", [1, 4, 30])
def test_jitter_adds_at_most_a_tenth_so_failures_do_not_retry_in_lockstep(attempt: int) -> None:
    low, mid, high = (backoff(attempt, j) for j in (0.0, 0.5, 0.999999))
    assert low < mid < high <= low * 1.1


def test_retry_at_adds_the_backoff_to_the_clock_it_is_given_or_the_kinds_own_policy() -> None:
    assert retry_at(3, T0, 0.0) == T0 + timedelta(seconds=82)
    assert retry_at(3, T0, 0.0, policy=lambda n: 0.25 * n) == T0 + timedelta(seconds=0.75)


def _job(kind: str, attempt: int) -> Job:
    return Job(
        id=1, kind=kind, queue="q", priority=5, args={}, state=JobState.RUNNING, attempt=attempt, max_attempts=5,
        run_at=T0, last_error=None, worker="w", created_at=T0, attempted_at=T0, finalized_at=None, updated_at=T0,
        version=2,
    )  # fmt: skip


def test_the_executor_gives_a_failed_attempt_the_policys_retry_time_on_its_injected_clock() -> None:
    registry = Registry()

    @registry.kind("boom")
    async def boom(ctx: JobContext[NoArgs]) -> None:
        raise RuntimeError("no")

    async def run() -> None:
        outcome = await execute(_job("boom", 2), registry, "w", "unused", clock=lambda: T0, jitter=lambda: 0.0)
        assert (outcome.kind, outcome.error) == ("failed", "RuntimeError: no")
        assert outcome.retry_at == T0 + timedelta(seconds=17)

    anyio.run(run)
