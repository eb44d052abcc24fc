"""A small, independent, pure-Python fold of job events: the specification the SQL must match.

It shares no code with schema.sql's ledger.fold(); the tests compare the two.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ledger.models import Event

CLAIMABLE = {"available", "scheduled", "retryable"}
FAILURES = {"failed", "discarded", "rescued"}


class Refused(Exception):
    pass


@dataclass
class ModelJob:
    id: int
    kind: str
    queue: str
    priority: int
    args: dict[str, Any]
    state: str
    attempt: int
    max_attempts: int
    run_at: datetime
    last_error: str | None
    worker: str | None
    created_at: datetime
    attempted_at: datetime | None
    finalized_at: datetime | None
    updated_at: datetime
    version: int
    limit_key: str | None = None
    unique_key: str | None = None


def _need(job: ModelJob, states: set[str]) -> None:
    if job.state not in states:
        raise Refused(f"{job.state} not in {sorted(states)}")


def fold(job: ModelJob | None, e: Event) -> ModelJob:
    """One event applied to one job, or Refused."""
    if e.version != (job.version if job else 0) + 1:
        raise Refused(f"version {e.version} after {job.version if job else 0}")
    d, t = e.data, e.type.value
    if t == "enqueued":
        run_at = datetime.fromisoformat(d["run_at"])
        job = ModelJob(
            id=e.job_id, kind=d["kind"], queue=d["queue"], priority=d["priority"], args=d["args"],
            state="available" if run_at <= e.at else "scheduled", attempt=0, max_attempts=d["max_attempts"],
            run_at=run_at, last_error=None, worker=None, created_at=e.at, attempted_at=None,
            finalized_at=None, updated_at=e.at, version=0, limit_key=d.get("limit_key"),
            unique_key=d.get("unique_key"),
        )  # fmt: skip
    elif job is None:
        raise Refused("first event must be enqueued")
    elif t == "started":
        _need(job, CLAIMABLE)
        job.state, job.attempt, job.worker, job.attempted_at = "running", job.attempt + 1, d["worker"], e.at
    elif t == "succeeded":
        _need(job, {"running"})
        job.state, job.finalized_at = "succeeded", e.at
    elif t == "failed":
        _need(job, {"running"})
        if job.attempt >= job.max_attempts:
            raise Refused("no attempts left")
        job.state, job.run_at, job.last_error = "retryable", datetime.fromisoformat(d["run_at"]), d["error"]
    elif t == "discarded":
        _need(job, {"running"})
        job.state, job.last_error, job.finalized_at = "discarded", d["error"], e.at
    elif t == "cancelled":
        _need(job, CLAIMABLE | {"running"})
        job.state, job.finalized_at = "cancelled", e.at
    elif t == "snoozed":
        _need(job, {"running"})
        job.state, job.run_at, job.max_attempts = "scheduled", datetime.fromisoformat(d["run_at"]), job.max_attempts + 1
    elif t == "rescued":
        _need(job, {"running"})
        job.last_error = d["error"]
        if job.attempt < job.max_attempts:
            job.state, job.run_at = "retryable", e.at
        else:
            job.state, job.finalized_at = "discarded", e.at
    elif t == "stopped":
        _need(job, {"cancelled"})
    elif t == "replayed":
        _need(job, {"discarded", "cancelled"})
        job.state, job.attempt, job.run_at, job.last_error, job.finalized_at = "available", 0, e.at, None, None
    job.version, job.updated_at = e.version, e.at
    return job


def fold_all(events: list[Event]) -> ModelJob | None:
    job: ModelJob | None = None
    for e in events:
        job = fold(job, e)
    return job


def discarded_errors(events: list[Event]) -> list[dict[str, Any]]:
    """The errors a dead letter lists: every failure since the last replay."""
    errors: list[dict[str, Any]] = []
    for e in events:
        if e.type.value == "replayed":
            errors = []
        elif e.type.value in FAILURES:
            errors.append({"attempt": e.data.get("attempt"), "error": e.data.get("error"), "at": e.at})
    return errors
