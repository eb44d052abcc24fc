"""The completer: records each attempt's outcome through the store.

Successes are batched: they wait here and the producer's next cycle records
all that are waiting with one statement (ledger.job_succeed_many), in the
same transaction that claims their replacements — one commit for both (see
worker/producer.py). Under load many jobs share a commit; when idle a lone
success is recorded at once, no timer delays it. Failures, snoozes and
cancels are rarer and carry more data: one statement each
(AsyncStore.fail/snooze/cancel). A failed attempt is recorded with the retry
time the executor took from ledger/retry_policy.py; the database makes the
job retryable at that time while attempts remain, and discards it otherwise.

Every command carries the version the claim returned (expected_version), so
an outcome for a job that was meanwhile rescued and re-claimed elsewhere, or
cancelled by an operator, is refused instead of overwriting newer history.
For a job an operator cancelled while it ran, what is recorded instead is
when and how its body ended (a `stopped` event, AsyncStore.stop): stopped on
the cancel, or ran to its end anyway.
A lost database is retried with backoff until the outcome is recorded: an
outcome is never dropped because PostgreSQL blinked.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import psycopg
from psycopg_pool import AsyncConnectionPool

from ledger.errors import IllegalTransition, JobNotFound, VersionConflict
from ledger.kinds import Registry
from ledger.models import Job
from ledger.statements import Success
from ledger.store_async import AsyncStore

from .executor import Outcome

__all__ = ["Completer", "Pending", "outcome_metadata", "record_outcome", "run_error_hooks", "success_of"]

log = logging.getLogger(__name__)

MAX_BATCH = 500

Pending = tuple[Outcome, "asyncio.Future[None]"]
"""A success waiting for a cycle, and the future its job's task left behind."""


def _duration_ms(o: Outcome) -> float:
    return round(o.duration * 1000, 3)


def _wait_ms(o: Outcome) -> float | None:
    """How long the job waited from due to started: the pickup latency that /metrics reports."""
    if o.job.attempted_at is None:
        return None
    return round(max((o.job.attempted_at - o.job.run_at).total_seconds(), 0) * 1000, 3)


def success_of(o: Outcome) -> Success:
    """A success as job_succeed_many records it: at the claim's version, with its run and wait times
    and what the handler returned."""
    return Success(o.job.id, o.job.version, _duration_ms(o), _wait_ms(o), o.result)


def outcome_metadata(o: Outcome, worker: str) -> dict[str, Any]:
    """The metadata of the event that records a failure, snooze or cancel."""
    meta: dict[str, Any] = {"worker": worker, "duration_ms": _duration_ms(o)}
    wait = _wait_ms(o)
    if wait is not None:
        meta["wait_ms"] = wait
    if o.traceback:
        meta["traceback"] = o.traceback
    return meta


async def record_outcome(store: AsyncStore, o: Outcome, worker: str) -> Job:
    """Record a failure, snooze or cancel (one statement each), at the version the claim returned.

    The completer's, and the pytest plugin's (ledger/worker/testing.py, which has a sync twin).
    """
    meta, version = outcome_metadata(o, worker), o.job.version
    if o.kind in ("failed", "discarded"):
        return await store.fail(
            o.job.id, o.error or "", retry_at=o.retry_at, discard=o.kind == "discarded",
            expected_version=version, metadata=meta,
        )  # fmt: skip
    if o.kind == "snoozed":
        assert o.run_at is not None
        return await store.snooze(o.job.id, o.run_at, expected_version=version, metadata=meta)
    return await store.cancel(o.job.id, o.error, expected_version=version, metadata=meta)


def run_error_hooks(registry: Registry, o: Outcome, recorded: Job | None) -> bool:
    """Call the registry's on_error hooks after a failed attempt; whether the job will be retried."""
    will_retry = recorded is not None and recorded.state == "retryable"
    for hook in registry.error_hooks:
        try:
            hook(o.job, o.exception or RuntimeError(o.error or ""), will_retry)
        except Exception:
            log.exception("error hook %r failed", hook)
    return will_retry


class Completer:
    def __init__(self, pool: AsyncConnectionPool[Any], registry: Registry, worker: str) -> None:
        self.pool = pool
        self.registry = registry
        self.worker = worker
        self._pending: list[Pending] = []
        self._stops: set[asyncio.Task[None]] = set()  # stops recorded after a refused success

    # ------------------------------------------------------------ successes, batched into cycles

    def submit(self, o: Outcome) -> asyncio.Future[None]:
        """Queue a success; the returned future resolves once it is recorded (by the producer's next cycle,
        which the job's freed slot has woken).

        A bare asyncio future rather than an anyio.Event: one is made per job.
        """
        done = asyncio.get_running_loop().create_future()
        self._pending.append((o, done))
        return done

    @property
    def has_pending(self) -> bool:
        return bool(self._pending)

    def take(self) -> list[Pending]:
        """Up to MAX_BATCH waiting successes, for a cycle to record."""
        batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
        return batch

    def put_back(self, batch: list[Pending]) -> None:
        """A cycle failed before it committed: its successes wait for the next one."""
        self._pending[:0] = batch

    @staticmethod
    def successes(batch: list[Pending]) -> list[Success]:
        return [success_of(o) for o, _ in batch]

    def settle(self, batch: list[Pending], recorded: dict[int, bool]) -> None:
        """After the cycle committed: release the waiting jobs; a success refused because the job
        was cancelled meanwhile is recorded as the end of its body (a success refused for any
        other reason, a rescue, is logged by that attempt)."""
        for o, done in batch:
            if not recorded.get(o.job.id, True):
                how = "the body ended after the cancel (succeeded)"
                task = asyncio.get_running_loop().create_task(self.record_stop(o, how))
                self._stops.add(task)
                task.add_done_callback(self._stops.discard)
            elif log.isEnabledFor(logging.DEBUG):
                self._log(o, None)
            if not done.done():
                done.set_result(None)

    # ------------------------------------------------------------ every other outcome, one statement each

    async def record(self, o: Outcome) -> None:
        """Record a failure, snooze or cancel now, retrying while the database is unavailable."""
        if o.kind == "stopped":
            await self.record_stop(o, o.error or "stopped on the cancel")
            return
        job = await self._retrying(o, lambda store: record_outcome(store, o, self.worker))
        if job is None:  # refused: cancelled meanwhile (recorded as the body's end), or rescued
            ended = o.kind + (f": {o.error}" if o.error else "")
            await self.record_stop(o, f"the body ended after the cancel ({ended})")
            return
        self._log(o, job)

    async def record_stop(self, o: Outcome, how: str) -> None:
        """The body of a job an operator cancelled while it ran has ended: record when and how.

        The cancel is the event right after the claim's, hence the version; if the job
        was not cancelled but rescued and claimed again elsewhere, this is refused too,
        and the outcome is only logged.
        """
        meta = outcome_metadata(o, self.worker)
        stopped = await self._retrying(
            o,
            lambda store: store.stop(o.job.id, how, expected_version=o.job.version + 1, metadata=meta),
            log_refusal=True,
        )
        if stopped is not None:
            log.info(
                "job %s stopped after its cancel: %s", o.job.id, how, extra={"job_id": o.job.id, "kind": o.job.kind}
            )

    async def _retrying(
        self, o: Outcome, command: Callable[[AsyncStore], Awaitable[Job]], *, log_refusal: bool = False
    ) -> Job | None:
        """Run a command until the database answers; None when it refused (the job moved on)."""
        delay = 0.1
        while True:
            try:
                async with self.pool.connection() as conn:
                    return await command(AsyncStore(conn))
            except (VersionConflict, IllegalTransition, JobNotFound) as exc:
                if log_refusal:
                    log.warning(
                        "outcome of job %s not recorded: %s",
                        o.job.id,
                        exc,
                        extra={"job_id": o.job.id, "kind": o.job.kind, "outcome": o.kind},
                    )
                return None
            except (psycopg.OperationalError, psycopg.errors.AdminShutdown) as exc:
                log.warning("database unavailable while recording job %s; retrying in %.1fs: %s", o.job.id, delay, exc)
                await anyio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _log(self, o: Outcome, recorded: Job | None) -> None:
        job = o.job
        fields = {"kind": job.kind, "job_id": job.id, "attempt": f"{job.attempt}/{job.max_attempts}"}
        if o.kind in ("failed", "discarded"):
            will_retry = run_error_hooks(self.registry, o, recorded)
            log.warning(
                "job %s attempt failed",
                job.id,
                extra={**fields, "error": o.error, "will_retry": will_retry,
                       "retry_at": recorded.run_at.isoformat() if will_retry and recorded else None},
            )  # fmt: skip
        else:
            log.debug("job %s %s", job.id, o.kind, extra={**fields, "duration_ms": _duration_ms(o)})
