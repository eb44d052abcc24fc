"""The ledger's data in Python: a job to enqueue, and the jobs, events and dead letters the database returns."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, NotRequired

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    StrictBool,
    StrictInt,
    StrictStr,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from typing_extensions import TypedDict

from .states import EventType, JobState

__all__ = [
    "BulkResult",
    "DiscardedJob",
    "Event",
    "Job",
    "JobCount",
    "JobFilter",
    "JobId",
    "JobRequest",
    "JobView",
    "Limit",
    "LimitRow",
    "Partition",
    "Progress",
    "QueueState",
    "QueueWait",
    "ScheduleEvent",
    "ScheduleRow",
    "ThroughputRow",
    "Unique",
    "job_rows",
]

# The enqueue rules, for Python's types and the OpenAPI document (web/openapi.py
# derives it from JobRequest). schema.sql's ledger._enqueue_problem states them
# for the database, which enforces them whoever calls; a test keeps the two in step.
QUEUE_PATTERN = r"^[A-Za-z0-9_.:-]{1,50}$"


# What the document says of run_at beyond RFC 3339: not an instant before the first day of year 1
# or after the last of 9999 (in UTC), which neither Python nor the API can hold (the client says so).
RUN_AT = r"^(?!0001-01-01T.*\+(?!00:00))(?!9999-12-31T.*-(?!00:00))"


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


NO_NUL = "^[^\u0000]*$"  # PostgreSQL text cannot hold NUL

ACTIVE_STATES = frozenset({JobState.SCHEDULED, JobState.AVAILABLE, JobState.RUNNING, JobState.RETRYABLE})


_ACTIVE_NAMES = sorted(s.value for s in ACTIVE_STATES)


def _no_repeats(value: Any) -> Any:
    # A set in Python; in JSON a list the document says holds each state once: say so, do not fold.
    if isinstance(value, list) and len(value) != len({str(v) for v in value}):
        raise ValueError("names a state twice")
    return value


MAX_SECONDS = 100 * 366 * 86400  # a hundred years, as ledger/durations.py bounds a duration


def _seconds(value: Any) -> Any:
    # A timedelta from Python, a number of seconds from JSON: one form each, so the document is exact.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not 1 <= value <= MAX_SECONDS:  # also NaN
            raise ValueError(f"must be between 1 and {MAX_SECONDS} seconds")
        value = timedelta(seconds=value)
    if not isinstance(value, timedelta):
        raise ValueError("must be a number of seconds")
    if not timedelta(seconds=1) <= value <= timedelta(seconds=MAX_SECONDS):
        raise ValueError(f"must be between 1 and {MAX_SECONDS} seconds")
    return value


Seconds = Annotated[
    timedelta,
    PlainValidator(_seconds),
    PlainSerializer(lambda v: v.total_seconds(), return_type=float),
    WithJsonSchema({"type": "number", "minimum": 1, "maximum": MAX_SECONDS}),
]
"""A period: a timedelta in Python, a number of seconds (1 to a hundred years) in JSON."""


class Unique(BaseModel):
    """A uniqueness rule (River's UniqueOpts): a second enqueue that matches a job in `states`
    returns that job's id, marked a duplicate, instead of a new job. The database enforces it
    (jobs_unique_idx), so racing enqueues make one job; when the job leaves `states` its key is
    free again.

    What matches: an explicit `key`, else the kind and its args (all of them, or the fields named
    in `args`), and the queue when `by_queue`; within the current `period` when one is given
    (periods aligned to the epoch, on the database's clock). A kind can declare its rule once
    (`@registry.kind(..., unique=Unique(...))`); an enqueue's own rule takes its place.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str | None = Field(default=None, min_length=1, max_length=200, pattern=NO_NUL)
    args: StrictBool | list[str] = True  # strict: 1 is not True (the API's document says boolean)
    by_queue: StrictBool = False
    period: Seconds | None = None
    states: Annotated[
        frozenset[JobState],
        Field(min_length=1, json_schema_extra={"allOf": [{"contains": {"const": s}} for s in _ACTIVE_NAMES]}),
        BeforeValidator(_no_repeats),
    ] = ACTIVE_STATES

    @field_validator("states")
    @classmethod
    def _active_included(cls, states: frozenset[JobState]) -> frozenset[JobState]:
        # A job moves among the active states without an enqueue: were one left out, a retry or a
        # claim could bring a job back into the rule while another holds its key (as River requires).
        missing = ACTIVE_STATES - states
        if missing:
            names = ", ".join(sorted(s.value for s in missing))
            raise ValueError(f"must include every active state (available, retryable, running, scheduled): no {names}")
        return states


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
    run_at: NotRequired[
        Annotated[datetime | None, BeforeValidator(_time_not_number), Field(json_schema_extra={"pattern": RUN_AT})]
    ]
    unique: NotRequired[Unique | None]


class JobId(int):
    """A job's id, as an enqueue returns it; `duplicate` when a uniqueness rule matched an existing job."""

    duplicate: bool

    def __new__(cls, value: int, duplicate: bool = False) -> JobId:
        job_id = super().__new__(cls, value)
        job_id.duplicate = duplicate
        return job_id


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
    limit_key: str | None = None
    """The limit this job counts against, `<scope>|<key>` (ledger.limits), or None."""
    unique_key: str | None = None
    """The key of its uniqueness rule (Unique), or None."""


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


class Progress(BaseModel):
    """The latest report of a job's running (or last) attempt: `ctx.progress(...)`'s fields."""

    attempt: int
    at: datetime
    value: JsonObject


class JobView(BaseModel):
    """A job, its history, its latest progress and what its last success returned: what
    `ledger show`, GET /api/jobs/<id> and the dashboard's job page show."""

    job: Job
    events: list[Event]
    progress: Progress | None
    result: Any = None

    @classmethod
    def of(cls, job: Job, events: list[Event], progress: Any) -> JobView:
        result = next(
            (e.data["result"] for e in reversed(events) if e.type == "succeeded" and "result" in e.data), None
        )
        return cls(job=job, events=events, progress=progress, result=result)


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


class QueueState(BaseModel):
    """A queue an operator paused or resumed (ledger.queue_state)."""

    model_config = ConfigDict(frozen=True)

    queue: str
    paused: bool
    changed_at: datetime
    changed_by: str | None
    reason: str | None


class Limit(BaseModel):
    """A limit across the whole fleet, enforced in the claim: at most `concurrency` jobs running at
    once and/or at most `rate` starts in any window of length `per`, per `key` — a field of the
    args, dotted for a nested one (`customer.id`); None: one key for all. Jobs over a limit wait;
    they neither fail nor spend an attempt, and other keys are not held up behind them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    concurrency: int | None = Field(default=None, ge=1)
    rate: int | None = Field(default=None, ge=1)
    per: timedelta | None = None
    key: str | None = Field(default=None, min_length=1, max_length=200)

    @model_validator(mode="after")
    def _complete(self) -> Limit:
        if self.concurrency is None and self.rate is None:
            raise ValueError("a limit needs a concurrency, a rate, or both")
        if (self.rate is None) != (self.per is None) or (self.per is not None and self.per <= timedelta(0)):
            raise ValueError("a rate needs a period longer than zero (rate=60, per=timedelta(minutes=1))")
        return self

    @property
    def key_path(self) -> list[str] | None:
        return self.key.split(".") if self.key else None


class LimitRow(BaseModel):
    """A declared limit as the database holds it (ledger.limits): `kind:<kind>` or `queue:<queue>`."""

    model_config = ConfigDict(frozen=True)

    scope: str
    concurrency: int | None
    rate: int | None
    per: timedelta | None
    key_path: list[str] | None
    updated_at: datetime


class QueueWait(BaseModel):
    """One queue's backlog (ledger/sql/queries.sql `queue_waits`): jobs due and not claimed,
    and how long the oldest has waited since it became due."""

    model_config = ConfigDict(frozen=True)

    queue: str
    due: int
    oldest_due_at: datetime
    oldest_wait: timedelta


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


# ---- schedules


class ScheduleRow(BaseModel):
    """A declared cron schedule (ledger.schedules): its definition, when it runs next, whether paused."""

    model_config = ConfigDict(frozen=True)

    name: str
    cron: str
    timezone: str
    kind: str
    args: dict[str, Any]
    queue: str
    priority: int
    max_attempts: int
    missed: str
    grace: timedelta
    next_run_at: datetime
    """The next slot; just after a declaration or a resume, the time slots count from (until a worker
    writes the slot)."""
    last_slot: datetime | None
    last_job_id: int | None
    declared_at: datetime
    paused: bool
    changed_at: datetime | None
    changed_by: str | None
    reason: str | None


class ScheduleEvent(BaseModel):
    """One row of ledger.schedule_events: a definition declared, a pause, a resume, slots missed."""

    model_config = ConfigDict(frozen=True)

    position: int
    schedule: str
    type: str
    at: datetime
    by: str | None
    reason: str | None
    data: dict[str, Any]


# ---- bulk actions

FilterText = Annotated[str, Field(min_length=1, max_length=200, pattern=NO_NUL)]


class JobFilter(BaseModel):
    """Which jobs an operator means (ledger._job_matches): a kind, a queue, ended (or, unfinished,
    enqueued) since a time, a last error containing `error_like`, args or last error containing
    `search` (case blind, plain text). Unset matches anything."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: FilterText | None = None
    queue: FilterText | None = None
    since: Annotated[
        datetime | None, BeforeValidator(_time_not_number), Field(json_schema_extra={"pattern": RUN_AT})
    ] = None
    error_like: FilterText | None = None
    search: FilterText | None = None

    @field_validator("since")
    @classmethod
    def _utc(cls, since: datetime | None) -> datetime | None:
        # In UTC: PostgreSQL refuses offsets past +-15:59 that RFC 3339 allows.
        if since is None:
            return None
        if since.tzinfo is None:
            raise ValueError("must carry a time zone (e.g. 2026-01-01T09:00:00+00:00)")
        try:
            return since.astimezone(UTC)
        except OverflowError:
            raise ValueError("is before the first date there is") from None

    @property
    def empty(self) -> bool:
        return all(v is None for v in self.params().values())

    def params(self) -> dict[str, Any]:
        return {"kind": self.kind, "queue": self.queue, "since": self.since, "error_like": self.error_like,
                "search": self.search}  # fmt: skip


class BulkResult(BaseModel):
    """What a bulk replay or cancel did (or, dry_run, would do): one batch id for the whole act; the
    jobs acted on; the ones refused and the ones that changed meanwhile, each with why."""

    model_config = ConfigDict(frozen=True)

    batch: str
    action: str
    dry_run: bool
    done: list[int]
    refused: list[dict[str, Any]]
    """[{"id": ..., "reason": ...}]: jobs that matched and could not be acted on."""
    changed: list[dict[str, Any]]
    """[{"id": ..., "reason": ...}]: jobs that matched when the act began and no longer did once locked."""


# ---- throughput


class ThroughputRow(BaseModel):
    """Outcomes of one kind in one minute (ledger.throughput, folded from the events)."""

    model_config = ConfigDict(frozen=True)

    minute: datetime
    kind: str
    succeeded: int
    failed: int
    discarded: int
