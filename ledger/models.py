"""Read models: a job, an event, a dead letter, as the database returns them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from .states import EventType, JobState

__all__ = ["DiscardedJob", "Event", "Job", "StateCount"]


class Job(BaseModel):
    """One row of the current-state projection (ledger.jobs)."""

    model_config = ConfigDict(frozen=True)

    id: int
    kind: str
    queue: str
    priority: int
    args: dict[str, Any]
    state: JobState
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


class Event(BaseModel):
    """One row of the ledger (ledger.events)."""

    model_config = ConfigDict(frozen=True)

    position: int
    job_id: int
    version: int
    type: EventType
    at: datetime
    data: dict[str, Any]
    metadata: dict[str, Any]


class DiscardedJob(BaseModel):
    """One dead letter (ledger.discarded), with the job's last error."""

    model_config = ConfigDict(frozen=True)

    job_id: int
    kind: str
    queue: str
    args: dict[str, Any]
    attempt: int
    max_attempts: int
    errors: list[dict[str, Any]]
    discarded_at: datetime
    last_error: str | None


class StateCount(BaseModel):
    state: JobState
    queue: str
    count: int
