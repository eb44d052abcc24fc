"""The completer: record each attempt's outcome through the schema's functions.

Every command carries the version the claim returned (expected_version), so
an outcome for a job that was meanwhile rescued and re-claimed elsewhere, or
cancelled by an operator, is refused instead of overwriting newer history.
A lost database is retried with backoff until the outcome is recorded: an
outcome is never dropped because PostgreSQL blinked.
"""

from __future__ import annotations

import logging
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


class Completer:
    def __init__(self, pool: AsyncConnectionPool[Any], registry: Registry, worker: str) -> None:
        self.pool = pool
        self.registry = registry
        self.worker = worker

    def _statement(self, o: Outcome) -> tuple[str, dict[str, Any]]:
        meta: dict[str, Any] = {"worker": self.worker, "duration_ms": round(o.duration * 1000, 3)}
        if o.job.attempted_at is not None:
            # How long the job waited from due to started: the pickup latency that /metrics reports.
            meta["wait_ms"] = round(max((o.job.attempted_at - o.job.run_at).total_seconds(), 0) * 1000, 3)
        if o.traceback:
            meta["traceback"] = o.traceback
        base = command_params(o.job.id, o.job.version, meta)
        if o.kind == "succeeded":
            return query("job_succeed"), base
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
            log.debug("job %s %s", job.id, o.kind, extra={**fields, "duration_ms": round(o.duration * 1000, 3)})
