"""The store: every read and command of the ledger over one psycopg connection.

Commands call the schema's functions (schema.sql), which append events and
update the projections in one transaction; this module adds types and turns
the database's refusals into LedgerErrors. With an autocommit connection each
command is its own transaction; inside `conn.transaction()` it joins the
caller's.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from .errors import refusals
from .models import DiscardedJob, Event, Job, StateCount
from .queries import query

__all__ = ["EnqueueRow", "Store", "command_params", "enqueue_params"]

EnqueueRow = tuple[str, dict[str, Any] | str, str, int, int, datetime | None]
"""(kind, args, queue, priority, max_attempts, run_at) of one job to enqueue.

args is a dict, or its JSON text when the caller has dumped it already (the
client has: it checks the text it sends)."""


def enqueue_params(rows: Sequence[EnqueueRow], metadata: dict[str, Any] | None) -> dict[str, Any]:
    """Parameters of the job_enqueue_many query: one array per column, the args as one JSON array."""
    args = ",".join(a if isinstance(a, str) else json.dumps(a) for _, a, *_ in rows)
    return {
        "kinds": [r[0] for r in rows],
        "args": f"[{args}]",
        "queues": [r[2] for r in rows],
        "priorities": [r[3] for r in rows],
        "max_attempts": [r[4] for r in rows],
        "run_ats": [r[5] for r in rows],
        "metadata": Jsonb(metadata or {}),
    }


class Store:
    """Reads and commands on one connection (dict rows)."""

    def __init__(self, conn: psycopg.Connection[DictRow]) -> None:
        self.conn = conn

    def _rows(self, name: str, params: dict[str, Any]) -> list[DictRow]:
        with refusals():
            return self.conn.execute(query(name), params).fetchall()

    def _job(self, name: str, params: dict[str, Any]) -> Job:
        return Job.model_validate(self._rows(name, params)[0])

    # ---- reads

    def job(self, job_id: int) -> Job | None:
        rows = self._rows("job_get", {"id": job_id})
        return Job.model_validate(rows[0]) if rows else None

    def events_for_job(self, job_id: int) -> list[Event]:
        return [Event.model_validate(r) for r in self._rows("events_for_job", {"id": job_id})]

    def discarded(self, *, kind: str | None = None, queue: str | None = None, limit: int = 50) -> list[DiscardedJob]:
        rows = self._rows("discarded_list", {"kind": kind, "queue": queue, "limit": limit})
        return [DiscardedJob.model_validate(r) for r in rows]

    def jobs(
        self,
        *,
        state: str | None = None,
        kind: str | None = None,
        queue: str | None = None,
        before: int | None = None,
        limit: int = 50,
    ) -> list[Job]:
        """Jobs newest first, filtered; pass the last id of a page as `before` for the next."""
        params = {"state": state, "kind": kind, "queue": queue, "before": before, "limit": limit}
        return [Job.model_validate(r) for r in self._rows("jobs_list", params)]

    def job_counts(self) -> list[DictRow]:
        """(state, queue, count, exact) cheaply: see ledger.job_counts() in schema.sql."""
        return self._rows("job_counts", {})

    def counts_by_state(self) -> list[StateCount]:
        return [StateCount.model_validate(r) for r in self._rows("counts_by_state", {})]

    # ---- commands

    def enqueue_many(self, rows: Sequence[EnqueueRow], metadata: dict[str, Any] | None = None) -> list[int]:
        if not rows:
            return []
        return [r["id"] for r in self._rows("job_enqueue_many", enqueue_params(rows, metadata))]

    def claim(self, queue: str, n: int, worker: str, *, lease: timedelta = timedelta(seconds=30)) -> list[Job]:
        """Claim up to n due jobs of one queue (see ledger.job_claim for why one)."""
        params = {"queue": queue, "n": n, "worker": worker, "lease": lease, "metadata": Jsonb({})}
        return [Job.model_validate(r) for r in self._rows("job_claim", params)]

    def succeed(
        self, job_id: int, *, expected_version: int | None = None, metadata: dict[str, Any] | None = None
    ) -> Job:
        return self._job("job_succeed", command_params(job_id, expected_version, metadata))

    def succeed_many(self, jobs: Sequence[tuple[int, int]], worker: str | None = None) -> dict[int, bool]:
        """Record many successes at once: (job id, expected version) -> recorded?"""
        params = {
            "ids": [j for j, _ in jobs],
            "versions": [v for _, v in jobs],
            "worker": worker,
            "duration_ms": [None] * len(jobs),
            "wait_ms": [None] * len(jobs),
        }
        return {r["job_id"]: r["recorded"] for r in self._rows("job_succeed_many", params)}

    def fail(
        self,
        job_id: int,
        error: str,
        *,
        retry_at: datetime | None = None,
        discard: bool = False,
        expected_version: int | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Job:
        params = command_params(job_id, expected_version, metadata, error=error, retry_at=retry_at, discard=discard)
        return self._job("job_fail", params)

    def cancel(
        self,
        job_id: int,
        reason: str | None = None,
        *,
        expected_version: int | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Job:
        return self._job("job_cancel", command_params(job_id, expected_version, metadata, reason=reason))

    def snooze(
        self,
        job_id: int,
        run_at: datetime,
        *,
        expected_version: int | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Job:
        return self._job("job_snooze", command_params(job_id, expected_version, metadata, run_at=run_at))

    def replay(
        self,
        job_id: int,
        *,
        actor: str | None = None,
        reason: str | None = None,
        expected_version: int | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Job:
        return self._job("job_replay", command_params(job_id, expected_version, metadata, actor=actor, reason=reason))

    def rescue(self, *, as_of: datetime | None = None, job_ids: Sequence[int] | None = None) -> list[Job]:
        params = {"as_of": as_of, "ids": list(job_ids) if job_ids is not None else None, "metadata": Jsonb({})}
        return [Job.model_validate(r) for r in self._rows("job_rescue", params)]

    def projections_diff(self) -> list[DictRow]:
        return self._rows("projections_diff", {})

    def projections_rebuild(self) -> int:
        jobs: int = self._rows("projections_rebuild", {})[0]["jobs"]
        return jobs


def command_params(
    job_id: int, expected_version: int | None, metadata: dict[str, Any] | None, **extra: Any
) -> dict[str, Any]:
    return {"id": job_id, "expected_version": expected_version, "metadata": Jsonb(metadata or {}), **extra}
