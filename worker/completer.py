"""The completer: record each attempt's outcome through the schema's functions.

Successes are batched: they queue up and one flusher task records all that
are waiting in one statement (ledger.job_succeed_many), so under load many
jobs share one commit (group commit), and when idle a lone success is
recorded at once — no timer delays it. A job's slot is freed only after its
outcome is recorded, so a graceful shutdown never loses one. Failures,
snoozes and cancels are rarer and carry more data: one statement each.

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
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from ledger.errors import IllegalTransition, JobNotFound, VersionConflict, refusals
from ledger.kinds import Registry
from ledger.queries import query
from ledger.store import command_params

from .executor import Outcome

__all__ = ["Completer"]

log = logging.getLogger(__name__)


MAX_BATCH = 500


class Completer:
    def __init__(self, pool: AsyncConnectionPool[Any], registry: Registry, worker: str) -> None:
        self.pool = pool
        self.registry = registry
        self.worker = worker
        self._pending: list[tuple[Outcome, anyio.Event]] = []
        self._wake = anyio.Event()

    def _meta(self, o: Outcome) -> dict[str, Any]:
        meta: dict[str, Any] = {"worker": self.worker, "duration_ms": round(o.duration * 1000, 3)}
        if o.job.attempted_at is not None:
            # How long the job waited from due to started: the pickup latency that /metrics reports.
            meta["wait_ms"] = round(max((o.job.attempted_at - o.job.run_at).total_seconds(), 0) * 1000, 3)
        if o.traceback:
            meta["traceback"] = o.traceback
        return meta

    async def run(self) -> None:
        """The flusher: record every waiting success in one statement, again and again, until cancelled."""
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            while self._pending:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                await self._flush([o for o, _ in batch])
                for _, done in batch:
                    done.set()

    async def _flush(self, batch: list[Outcome]) -> None:
        params = {
            "ids": [o.job.id for o in batch],
            "versions": [o.job.version for o in batch],
            "metadata": [Jsonb(self._meta(o)) for o in batch],
        }
        delay = 0.1
        while True:
            try:
                async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
                    await cur.execute(query("job_succeed_many"), params)
                    rows = await cur.fetchall()
                break
            except (psycopg.OperationalError, psycopg.errors.AdminShutdown) as exc:
                log.warning("database unavailable while recording %d success(es); retrying in %.1fs: %s",
                            len(batch), delay, exc)  # fmt: skip
                await anyio.sleep(delay)
                delay = min(delay * 2, 5.0)
        by_id = {o.job.id: o for o in batch}
        for r in rows:
            o = by_id[r["job_id"]]
            if not r["recorded"]:
                log.warning(
                    "outcome of job %s not recorded: it is no longer running at version %s (cancelled or rescued)",
                    o.job.id, o.job.version, extra={"job_id": o.job.id, "kind": o.job.kind, "outcome": o.kind},
                )  # fmt: skip
            elif log.isEnabledFor(logging.DEBUG):
                self._log(o, None)

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
            done = anyio.Event()
            self._pending.append((o, done))
            self._wake.set()
            await done.wait()
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
            log.debug("job %s %s", job.id, o.kind, extra={**fields, "duration_ms": round(o.duration * 1000, 3)})
