"""The completer: record each attempt's outcome through the schema's functions.

Successes are batched: they queue up here and the worker's next cycle
records all that are waiting with one statement (ledger.job_succeed_many),
in the same transaction that claims their replacements — one commit for
both (see worker/runtime.py). Under load many jobs share a commit; when idle
a lone success is recorded at once, no timer delays it. A job's slot is
freed only after its outcome is recorded, so a graceful shutdown never loses
one. Failures, snoozes and cancels are rarer and carry more data: one
statement each.

Every command carries the version the claim returned (expected_version), so
an outcome for a job that was meanwhile rescued and re-claimed elsewhere, or
cancelled by an operator, is refused instead of overwriting newer history.
A lost database is retried with backoff until the outcome is recorded: an
outcome is never dropped because PostgreSQL blinked.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import anyio
import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from ledger.errors import IllegalTransition, JobNotFound, VersionConflict, refusals
from ledger.kinds import Registry
from ledger.queries import query
from ledger.store import command_params

from .executor import Outcome

__all__ = ["Completer"]

log = logging.getLogger(__name__)


MAX_BATCH = 500


def _duration_ms(o: Outcome) -> float:
    return round(o.duration * 1000, 3)


def _wait_ms(o: Outcome) -> float | None:
    """How long the job waited from due to started: the pickup latency that /metrics reports."""
    if o.job.attempted_at is None:
        return None
    return round(max((o.job.attempted_at - o.job.run_at).total_seconds(), 0) * 1000, 3)


class Completer:
    def __init__(
        self, pool: AsyncConnectionPool[Any], registry: Registry, worker: str, wake: Callable[[], None]
    ) -> None:
        self.pool = pool
        self.registry = registry
        self.worker = worker
        self.wake = wake
        self._pending: list[tuple[Outcome, asyncio.Future[None]]] = []

    def _meta(self, o: Outcome) -> dict[str, Any]:
        meta: dict[str, Any] = {"worker": self.worker, "duration_ms": _duration_ms(o)}
        wait = _wait_ms(o)
        if wait is not None:
            meta["wait_ms"] = wait
        if o.traceback:
            meta["traceback"] = o.traceback
        return meta

    def submit(self, o: Outcome) -> asyncio.Future[None]:
        """Queue a success; the returned future resolves once it is recorded (by the worker's next cycle).

        A bare asyncio future rather than an anyio.Event: one is made per job.
        """
        done = asyncio.get_running_loop().create_future()
        self._pending.append((o, done))
        self.wake()
        return done

    @property
    def has_pending(self) -> bool:
        return bool(self._pending)

    def take(self) -> list[tuple[Outcome, asyncio.Future[None]]]:
        batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
        return batch

    def put_back(self, batch: list[tuple[Outcome, asyncio.Future[None]]]) -> None:
        self._pending[:0] = batch

    def succeed_params(self, batch: list[tuple[Outcome, asyncio.Future[None]]]) -> dict[str, Any]:
        """Parameters of job_succeed_many for a batch taken from the queue (plain arrays, no JSON)."""
        return {
            "ids": [o.job.id for o, _ in batch],
            "versions": [o.job.version for o, _ in batch],
            "worker": self.worker,
            "duration_ms": [_duration_ms(o) for o, _ in batch],
            "wait_ms": [_wait_ms(o) for o, _ in batch],
        }

    def settle(self, batch: list[tuple[Outcome, asyncio.Future[None]]], rows: list[dict[str, Any]]) -> None:
        """After the cycle committed: log refusals and release the waiting jobs."""
        by_id = {o.job.id: o for o, _ in batch}
        for r in rows:
            o = by_id[r["job_id"]]
            if not r["recorded"]:
                log.warning(
                    "outcome of job %s not recorded: it is no longer running at version %s (cancelled or rescued)",
                    o.job.id, o.job.version, extra={"job_id": o.job.id, "kind": o.job.kind, "outcome": o.kind},
                )  # fmt: skip
            elif log.isEnabledFor(logging.DEBUG):
                self._log(o, None)
        for _, done in batch:
            if not done.done():
                done.set_result(None)

    def _statement(self, o: Outcome) -> tuple[str, dict[str, Any]]:
        base = command_params(o.job.id, o.job.version, self._meta(o))
        if o.kind in ("failed", "discarded"):
            return query("job_fail"), {
                **base,
                "error": o.error,
                "retry_at": o.retry_at,
                "discard": o.kind == "discarded",
            }
        if o.kind == "snoozed":
            return query("job_snooze"), {**base, "run_at": o.run_at}
        return query("job_cancel"), {**base, "reason": o.error}

    async def record(self, o: Outcome) -> None:
        if o.kind == "succeeded":
            await self.submit(o)
            return
        statement, params = self._statement(o)
        delay = 0.1
        while True:
            try:
                async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
                    with refusals():
                        await cur.execute(statement, params)
                    row = await cur.fetchone()
                break
            except (VersionConflict, IllegalTransition, JobNotFound) as exc:
                log.warning(
                    "outcome of job %s not recorded: %s",
                    o.job.id,
                    exc,
                    extra={"job_id": o.job.id, "kind": o.job.kind, "outcome": o.kind},
                )
                return
            except (psycopg.OperationalError, psycopg.errors.AdminShutdown) as exc:
                log.warning("database unavailable while recording job %s; retrying in %.1fs: %s", o.job.id, delay, exc)
                await anyio.sleep(delay)
                delay = min(delay * 2, 5.0)
        self._log(o, row)

    def _log(self, o: Outcome, row: dict[str, Any] | None) -> None:
        job = o.job
        fields = {"kind": job.kind, "job_id": job.id, "attempt": f"{job.attempt}/{job.max_attempts}"}
        if o.kind in ("failed", "discarded"):
            will_retry = row is not None and row["state"] == "retryable"
            log.warning(
                "job %s attempt failed",
                job.id,
                extra={**fields, "error": o.error, "will_retry": will_retry,
                       "retry_at": row["run_at"].isoformat() if will_retry and row else None},
            )  # fmt: skip
            for hook in self.registry.error_hooks:
                try:
                    hook(job, o.exception or RuntimeError(o.error or ""), will_retry)
                except Exception:
                    log.exception("error hook %r failed", hook)
        else:
            log.debug("job %s %s", job.id, o.kind, extra={**fields, "duration_ms": _duration_ms(o)})
