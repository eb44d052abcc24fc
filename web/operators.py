"""The JSON API of operators: bulk replay and cancel, queues (pause, resume), limits, schedules, throughput.

Every route is in the `api` area (the bearer token when the server has one);
bodies are JSON objects validated by the models below, whose refusals name
the field (422); the database's refusals map as everywhere (web/errors.py).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Annotated, Any

import falcon
from psycopg_pool import ConnectionPool
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt, ValidationError

from ledger.cron import next_run
from ledger.errors import InvalidArguments
from ledger.kinds import SCHEDULE_NAME, Registry, error_fields, format_validation_error
from ledger.models import NO_NUL, QUEUE_PATTERN, JobCount, JobFilter, Limit, LimitRow, QueueWait, ScheduleRow, Seconds
from ledger.store import Store

from .api import ActionBody, _Base, _body, _int_param, action_body, text_param
from .stores import store

__all__ = [
    "BulkBody",
    "BulkResource",
    "LimitBody",
    "LimitResource",
    "LimitView",
    "LimitsResource",
    "QueueActionResource",
    "QueueView",
    "QueuesResource",
    "ScheduleActionResource",
    "ScheduleView",
    "SchedulesResource",
    "ThroughputResource",
    "bulk_body",
    "check_queue",
    "check_schedule",
    "queue_views",
    "schedule_views",
]

SCOPE_PATTERN = r"^(kind|queue):[A-Za-z0-9_.:-]{1,200}$"
# Not blank, no NUL: a reason recorded in every event. The blanks are spelled out rather than \s, which
# JSON Schema's (ECMA) regexes and pydantic's (Rust) do not read alike.
SAYS_SOMETHING = "^[^\u0000]*[^ \t\n\r\u0000][^\u0000]*$"
FILTER_FIELDS = ("kind", "queue", "since", "error_like", "search")
MAX_HOURS = 192  # the rollup keeps eight days
FOLD_AT_MOST = 500_000
"""Events one read folds at most (about half a second here): a read after a long quiet catches up over a
few reads rather than making one wait. The fold happens when someone looks (as /metrics folds its
histograms when scraped), not in the workers: at 10,000 jobs/s it costs about a tenth of a database
core while a page is open."""


def _validated(model: type[BaseModel], data: Any) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidArguments(f"invalid body: {format_validation_error(exc)}", error_fields(exc)) from None


def _check(value: str, pattern: str, field: str, what: str) -> str:
    if not re.fullmatch(pattern, value):
        raise InvalidArguments(f"{field} {value[:100]!r}: {what}", [field])
    return value


def check_queue(queue: str) -> str:
    return _check(queue, QUEUE_PATTERN, "queue", "must be 1-50 letters, digits, or _ . : -")


def check_schedule(name: str) -> str:
    return _check(name, SCHEDULE_NAME, "name", "must be 1-100 letters, digits, or _ . : -")


# ---------------------------------------------------------------- bulk replay and cancel


class BulkBody(JobFilter):
    """POST /api/jobs/replay and /cancel: which jobs (at least one filter), why (required), who, and
    whether only to say what would be done."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    reason: Annotated[str, Field(min_length=1, max_length=1000, pattern=SAYS_SOMETHING)]
    by: Annotated[str, Field(min_length=1, max_length=200, pattern=NO_NUL)] | None = None
    dry_run: StrictBool = False


def bulk_body(data: Any) -> BulkBody:
    body: BulkBody = _validated(BulkBody, data)
    if body.empty:
        raise InvalidArguments("filters: give at least one of kind, queue, since, error_like, search", ["kind"])
    return body


def filter_of(body: BulkBody) -> JobFilter:
    return JobFilter.model_validate(body.params())


class BulkResource(_Base):
    """Replay every matching dead letter, or cancel every matching unfinished job, as one act."""

    def __init__(self, pool: ConnectionPool[Any], registry: Registry, action: str) -> None:
        super().__init__(pool, registry)
        self.action = action

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = bulk_body(_body(req))
        with store(self.pool) as s:
            result = s.jobs_bulk(self.action, filter_of(body), reason=body.reason, actor=body.by or "api",
                                 via="api", dry_run=body.dry_run)  # fmt: skip
        resp.media = {**result.model_dump(mode="json"), "count": len(result.done)}


# ---------------------------------------------------------------- queues


class LimitView(BaseModel):
    """A declared limit as the API shows it: `per` in seconds, `key` dotted."""

    scope: str
    concurrency: int | None
    rate: int | None
    per: float | None
    key: str | None
    updated_at: datetime

    @classmethod
    def of(cls, row: LimitRow) -> LimitView:
        return cls(scope=row.scope, concurrency=row.concurrency, rate=row.rate,
                   per=row.per.total_seconds() if row.per is not None else None,
                   key=".".join(row.key_path) if row.key_path else None, updated_at=row.updated_at)  # fmt: skip


class QueueView(BaseModel):
    """One queue: its jobs per state (exact for the states a job passes through), its backlog, whether it is
    paused (who, when, why: the latest pause or resume), and its limit."""

    queue: str
    counts: dict[str, int]
    due: int
    oldest_wait_seconds: float | None
    paused: bool
    changed_at: datetime | None
    changed_by: str | None
    reason: str | None
    limit: LimitView | None


def queue_views(s: Store) -> list[QueueView]:
    """Every queue that has jobs, was ever paused, or has a limit."""
    counts: list[JobCount] = s.job_counts()
    waits: dict[str, QueueWait] = {w.queue: w for w in s.queue_waits()}
    states = {q.queue: q for q in s.queue_states()}
    limits = {row.scope.removeprefix("queue:"): row for row in s.limits() if row.scope.startswith("queue:")}
    names = {c.queue for c in counts if c.exact} | set(waits) | set(states) | set(limits)
    views = []
    for name in sorted(names):
        state, wait = states.get(name), waits.get(name)
        views.append(QueueView(
            queue=name,
            counts={c.state.value: c.count for c in counts if c.queue == name},
            due=wait.due if wait else 0,
            oldest_wait_seconds=wait.oldest_wait.total_seconds() if wait else None,
            paused=bool(state and state.paused),
            changed_at=state.changed_at if state else None,
            changed_by=state.changed_by if state else None,
            reason=state.reason if state else None,
            limit=LimitView.of(limits[name]) if name in limits else None,
        ))  # fmt: skip
    return views


class QueuesResource(_Base):
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        with store(self.pool) as s:
            views = queue_views(s)
        resp.media = {"queues": [v.model_dump(mode="json") for v in views]}


class QueueActionResource(_Base):
    """POST /api/queues/{queue}/pause and /resume with an optional {"reason", "by"}; 409 resuming a running queue."""

    def __init__(self, pool: ConnectionPool[Any], registry: Registry, paused: bool) -> None:
        super().__init__(pool, registry)
        self.paused = paused

    def on_post(self, req: falcon.Request, resp: falcon.Response, queue: str) -> None:
        check_queue(queue)
        body = action_body(_body(req))
        with store(self.pool) as s:
            state = s.queue_set_paused(queue, self.paused, actor=body.by or "api", reason=body.reason)
        resp.media = {"queue": state.model_dump(mode="json")}


# ---------------------------------------------------------------- limits


def _whole(value: Any) -> Any:
    # JSON (and JSON Schema's "integer") does not tell 7.0 from 7; a string or a bool stays refused.
    return int(value) if isinstance(value, float) and value.is_integer() else value


Count = Annotated[StrictInt, Field(ge=1, le=2**31 - 1), BeforeValidator(_whole)]


class LimitBody(BaseModel):
    """PUT /api/limits/{scope}: at most `concurrency` running at once and/or `rate` starts per `per`
    seconds, per value of the args field `key` (dotted; none: one key for the scope)."""

    model_config = ConfigDict(extra="forbid")

    concurrency: Count | None = None
    rate: Count | None = None
    per: Seconds | None = None
    key: Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\u0000.]+(\.[^\u0000.]+)*$")] | None = None


def check_scope(scope: str) -> str:
    return _check(scope, SCOPE_PATTERN, "scope", "must be kind:<kind> or queue:<queue>")


def limit_of(concurrency: int | None, rate: int | None, per: timedelta | None, key: str | None) -> Limit:
    """A limit from the API's body or the queues page's form; refusals name the field."""
    if concurrency is None and rate is None:
        raise InvalidArguments("concurrency: a limit needs a concurrency, a rate, or both", ["concurrency"])
    if (rate is None) != (per is None):
        raise InvalidArguments("per: a rate needs a period in seconds (rate 60, per 60), and a period a rate", ["per"])
    try:
        return Limit(concurrency=concurrency, rate=rate, per=per, key=key)
    except ValidationError as exc:
        raise InvalidArguments(f"invalid limit: {format_validation_error(exc)}", error_fields(exc)) from None


class LimitsResource(_Base):
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        with store(self.pool) as s:
            rows = s.limits()
        resp.media = {"limits": [LimitView.of(r).model_dump(mode="json") for r in rows]}


class LimitResource(_Base):
    """PUT declares (or changes) a scope's limit; DELETE removes it (404 when there is none)."""

    def on_put(self, req: falcon.Request, resp: falcon.Response, scope: str) -> None:
        check_scope(scope)
        body: LimitBody = _validated(LimitBody, _body(req))
        limit = limit_of(body.concurrency, body.rate, body.per, body.key)
        with store(self.pool) as s:
            row = s.limit_set(scope, limit)
        resp.media = {"limit": LimitView.of(row).model_dump(mode="json")}

    def on_delete(self, req: falcon.Request, resp: falcon.Response, scope: str) -> None:
        check_scope(scope)
        with store(self.pool) as s:
            cleared = s.limit_clear(scope)
        if not cleared:
            raise falcon.HTTPNotFound(title="not found", description=f"no limit is declared on {scope}")
        resp.status = falcon.HTTP_204


# ---------------------------------------------------------------- schedules


class ScheduleView(BaseModel):
    """A schedule as the API shows it: its row, and when it runs next (`next_run_is`: next, due since, paused)."""

    schedule: ScheduleRow
    next_run: datetime | None
    next_run_is: str


def schedule_views(s: Store) -> list[ScheduleView]:
    rows, now = s.schedules()
    views = []
    for row in rows:
        when, how = next_run(row, now)
        views.append(ScheduleView(schedule=row, next_run=when, next_run_is=how))
    return views


class SchedulesResource(_Base):
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        with store(self.pool) as s:
            views = schedule_views(s)
        resp.media = {"schedules": [v.model_dump(mode="json") for v in views]}


class ScheduleActionResource(_Base):
    """POST /api/schedules/{name}/pause and /resume with an optional {"reason", "by"}."""

    def __init__(self, pool: ConnectionPool[Any], registry: Registry, paused: bool) -> None:
        super().__init__(pool, registry)
        self.paused = paused

    def on_post(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        check_schedule(name)
        body: ActionBody = action_body(_body(req))
        with store(self.pool) as s:
            row = s.schedule_set_paused(name, self.paused, actor=body.by or "api", reason=body.reason)
        resp.media = {"schedule": row.model_dump(mode="json")}


# ---------------------------------------------------------------- throughput


class ThroughputResource(_Base):
    """GET /api/throughput?hours=3&kind=K: outcomes per minute and kind (the rollup, folded first)."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        hours = _int_param(req, "hours", 3, 1, MAX_HOURS)
        kind = text_param(req, "kind")
        with store(self.pool) as s:
            s.throughput_refresh(max_events=FOLD_AT_MOST)
            since = s.db_now_minus(timedelta(hours=hours or 3))
            rows = s.throughput(since, kind)
        resp.media = {"since": since.isoformat(), "minutes": [r.model_dump(mode="json") for r in rows]}
