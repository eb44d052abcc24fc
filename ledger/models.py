"""The ledger's data in Python: a job to enqueue, and the jobs, events and dead letters the database returns."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Annotated, Any, NotRequired

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt, StrictStr
from typing_extensions import TypedDict

from .states import EventType, JobState

__all__ = ["DiscardedJob", "Event", "Job", "JobCount", "JobRequest", "Partition", "job_rows"]

# The enqueue rules, for Python's types and the OpenAPI document (web/openapi.py
# derives it from JobRequest). schema.sql's ledger._enqueue_problem states them
# for the database, which enforces them whoever calls; a test keeps the two in step.
QUEUE_PATTERN = r"^[A-Za-z0-9_.:-]{1,50}$"


def _time_not_number(value: Any) -> Any:
    # Lax pydantic would read 0.0 or "1700000000" as a Unix time; a job's time is ISO 8601.
    if value is None or isinstance(value, datetime):
        return value
    if isinstance(value, str) and not value.strip().lstrip("-").replace(".", "", 1).isdigit():
        return value
    raise ValueError("must be an ISO 8601 date-time with a zone, e.g. 2030-01-01T09:00:00+00:00")


def _whole_number(value: Any) -> Any:
    # JSON (and JSON Schema's "integer") does not tell 7.0 from 7; a string or a bool stays refused.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _json_text(value: Any) -> Any:
    # A connection may load jsonb as text: Django's psycopg backend registers such a loader
    # so that its JSONField decodes for itself, and inline jobs run on Django's connection.
    return json.loads(value) if isinstance(value, str | bytes) else value


JsonObject = Annotated[dict[str, Any], BeforeValidator(_json_text)]
JsonList = Annotated[list[dict[str, Any]], BeforeValidator(_json_text)]


class JobRequest(TypedDict):
    """One job to enqueue, as a dict. Unset options take the kind's defaults. Strict: "5" is not a priority.

    A TypedDict rather than a model: pydantic validates a list of them in one
    call into plain dicts, which cost a quarter of the time of model instances
    and leave the garbage collector nothing to trace (measured here).
    """

    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]

    kind: StrictStr
    args: NotRequired[dict[str, Any]]
    queue: NotRequired[Annotated[StrictStr | None, Field(pattern=QUEUE_PATTERN)]]
    priority: NotRequired[Annotated[StrictInt, Field(ge=0, le=9), BeforeValidator(_whole_number)] | None]
    max_attempts: NotRequired[Annotated[StrictInt, Field(ge=1, le=1000), BeforeValidator(_whole_number)] | None]
    run_at: NotRequired[Annotated[datetime | None, BeforeValidator(_time_not_number)]]


class Job(BaseModel):
    """One row of the current-state projection (ledger.jobs)."""

    model_config = ConfigDict(frozen=True)

    id: int
    kind: str
    queue: str
    priority: int
    args: JsonObject
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
    data: JsonObject
    metadata: JsonObject


class DiscardedJob(BaseModel):
    """One dead letter (ledger.discarded), with the job's last error."""

    model_config = ConfigDict(frozen=True)

    job_id: int
    kind: str
    queue: str
    args: JsonObject
    attempt: int
    max_attempts: int
    errors: JsonList
    discarded_at: datetime
    last_error: str | None


class JobCount(BaseModel):
    """Jobs of one state in one queue (ledger.job_counts()): past 100k jobs, finished states are
    estimated from the planner's statistics (exact false, queue "*")."""

    model_config = ConfigDict(frozen=True)

    state: JobState
    queue: str
    count: int
    exact: bool


class Partition(BaseModel):
    """One partition of ledger.events: the job ids [lo, hi) it holds."""

    model_config = ConfigDict(frozen=True)

    lo: int
    hi: int
    name: str
    pruned_at: datetime | None


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
