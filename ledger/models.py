"""Read models: a job, an event, a dead letter, as the database returns them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from .states import EventType, JobState

__all__ = ["DiscardedJob", "Event", "Job", "StateCount", "job_rows"]


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


_JOB_FIELDS = frozenset(Job.model_fields)
# An enum column arrives as text, or as bytes from a binary cursor (psycopg has no loader for it).
_STATES: dict[str | bytes, JobState] = {**{s.value: s for s in JobState}, **{s.value.encode(): s for s in JobState}}


def job_rows(cursor: Any) -> Callable[[Sequence[Any]], Job]:
    """psycopg row factory: rows of ledger.jobs straight into Job objects, without validation.

    They come from the database as the table defines them, so there is nothing
    to validate; this is what Job.model_construct does, minus its per-field
    loop (about 5% of the worker's time at full drain, py-spy). The worker's claims use it.
    """
    names = [c.name for c in cursor.description]
    new = Job.__new__
    setattr_ = object.__setattr__

    def make(values: Sequence[Any]) -> Job:
        job = new(Job)
        fields = dict(zip(names, values, strict=True))
        fields["state"] = _STATES[fields["state"]]  # the enum, as validation would have made it
        setattr_(job, "__dict__", fields)
        setattr_(job, "__pydantic_fields_set__", _JOB_FIELDS)
        setattr_(job, "__pydantic_extra__", None)
        setattr_(job, "__pydantic_private__", None)
        return job

    return make
