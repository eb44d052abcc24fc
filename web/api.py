"""The JSON API: list, read, enqueue, replay and cancel jobs; counts by state and queue."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import Any

import falcon
from psycopg_pool import ConnectionPool
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ledger.client import Client
from ledger.durations import parse_duration
from ledger.errors import InvalidArguments
from ledger.jsoncheck import check_json
from ledger.kinds import Registry, error_fields, format_validation_error
from ledger.states import JobState

from .stores import store

__all__ = [
    "JOB_ID",
    "ActionBody",
    "CountsResource",
    "JobActionResource",
    "JobResource",
    "JobsResource",
    "action_body",
    "form_reason",
    "list_params",
    "parse_time",
    "text_param",
    "time_param",
]

MAX_PAGE = 500
# A job id in a route: an id beyond bigint matches no route (404) instead of reaching the database.
JOB_ID = "{job_id:int(min=1, max=9223372036854775807)}"


def _int_param(req: falcon.Request, name: str, default: int | None, lo: int, hi: int) -> int | None:
    raw = req.get_param(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidArguments(f"{name} {raw!r}: must be a whole number", [name]) from None
    if not lo <= value <= hi:
        raise InvalidArguments(f"{name} {value}: must be between {lo} and {hi}", [name])
    return value


def text_param(req: falcon.Request, name: str) -> str | None:
    value = req.get_param(name) or None
    if value is not None and ("\x00" in value or len(value) > 200):
        raise InvalidArguments(f"{name}: must be at most 200 characters without NUL", [name])
    return value


def parse_time(raw: str | None, name: str, *, durations: bool = False) -> datetime | None:
    """An ISO 8601 time with a zone (in UTC after); with `durations`, also `30m`, `2h`, `1d`: that long ago."""
    if not raw:
        return None
    if durations:
        with contextlib.suppress(InvalidArguments):
            return datetime.now(UTC) - parse_duration(raw, name)
    try:
        when = datetime.fromisoformat(raw.strip())
        if when.tzinfo is None:
            raise ValueError
        return when.astimezone(UTC)
    except (ValueError, OverflowError):
        raise InvalidArguments(
            f"{name} {raw[:100]!r}: must be an ISO 8601 time with a zone, e.g. 2026-01-01T09:00:00+00:00", [name]
        ) from None


def time_param(req: falcon.Request, name: str, *, durations: bool = False) -> datetime | None:
    """Query parameter `name` read by parse_time."""
    return parse_time(text_param(req, name), name, durations=durations)


def list_params(req: falcon.Request, *, durations: bool = False) -> dict[str, Any]:
    """Validated filters of a job listing (shared by the API and the dashboard): `search` looks in the
    args and the last error, `error_like` in the last error; `since`: ended (or, unfinished, enqueued) since."""
    state = req.get_param("state") or None
    if state is not None and state not in JobState.__members__.values():
        raise InvalidArguments(f"state {state!r}: must be one of {', '.join(JobState)}", ["state"])
    return {
        "state": state,
        "kind": text_param(req, "kind"),
        "queue": text_param(req, "queue"),
        "since": time_param(req, "since", durations=durations),
        "error_like": text_param(req, "error_like"),
        "search": text_param(req, "search"),
        "before": _int_param(req, "before", None, 1, 2**63 - 1),
        "limit": _int_param(req, "limit", 50, 1, MAX_PAGE),
    }


class _Base:
    area = "api"

    def __init__(self, pool: ConnectionPool[Any], registry: Registry) -> None:
        self.pool = pool
        self.registry = registry


def _body(req: falcon.Request) -> dict[str, Any]:
    # JSON only: a form or multipart body is what a cross-site <form> can send without
    # a CORS preflight, and falcon would parse either into a dict as if it were JSON.
    media_type = (req.content_type or "").split(";", 1)[0].strip().lower()
    if media_type and media_type != falcon.MEDIA_JSON:
        raise falcon.HTTPUnsupportedMediaType(
            title="body is not JSON", description=f"send the body as {falcon.MEDIA_JSON}, not {media_type[:100]}"
        )
    media = req.get_media(default_when_empty={})
    if not isinstance(media, dict):
        raise InvalidArguments("the body must be a JSON object", ["(body)"])
    return media


class JobsResource(_Base):
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        params = list_params(req)
        with store(self.pool) as s:
            jobs = s.jobs(**params)
        resp.media = {
            "jobs": [j.model_dump(mode="json") for j in jobs],
            "next_before": jobs[-1].id if len(jobs) == params["limit"] else None,
        }

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        """201 and the new job's id; 200 and the existing job's id when a `unique` rule matched it."""
        body = _body(req)
        with store(self.pool) as s:
            [job_id] = Client(registry=self.registry).enqueue_many([body], conn=s.conn, metadata={"via": "api"})
        resp.status = falcon.HTTP_200 if job_id.duplicate else falcon.HTTP_201
        resp.location = f"/api/jobs/{job_id}"
        resp.media = {"id": int(job_id), "duplicate": job_id.duplicate}


class JobResource(_Base):
    def on_get(self, req: falcon.Request, resp: falcon.Response, job_id: int) -> None:
        with store(self.pool) as s:
            view = s.job_view(job_id)
        if view is None:
            raise falcon.HTTPNotFound(title="job not found", description=f"job {job_id} not found")
        resp.media = view.model_dump(mode="json")  # the job, its events, its progress and its result


NO_NUL = "^[^\u0000]*$"  # PostgreSQL text cannot hold NUL


class ActionBody(BaseModel):
    """Body of replay and cancel: who asks and why, both optional; nothing else."""

    model_config = ConfigDict(extra="forbid", strict=True)

    reason: str | None = Field(default=None, max_length=1000, pattern=NO_NUL)
    by: str | None = Field(default=None, max_length=200, pattern=NO_NUL)


def action_body(data: Any) -> ActionBody:
    """A replay or cancel body (the API's, or a dashboard form's reason), validated; refusals name the field."""
    try:
        body = ActionBody.model_validate(data)
    except ValidationError as exc:
        raise InvalidArguments(f"invalid body: {format_validation_error(exc)}", error_fields(exc)) from None
    check_json(body.model_dump(), "(body)")
    return body


def form_reason(form: dict[str, str]) -> str | None:
    """A dashboard form's reason, by the API's rules (ActionBody: length, no NUL); None when blank."""
    return action_body({"reason": form.get("reason") or None}).reason


class JobActionResource(_Base):
    """POST /api/jobs/{id}/replay and /cancel with an optional {"reason": "..."}; 409 when illegal."""

    def __init__(self, pool: ConnectionPool[Any], registry: Registry, action: str) -> None:
        super().__init__(pool, registry)
        self.action = action

    def on_post(self, req: falcon.Request, resp: falcon.Response, job_id: int) -> None:
        body = action_body(_body(req))
        reason, actor = body.reason, body.by or "api"
        with store(self.pool) as s:
            if self.action == "replay":
                job = s.replay(job_id, actor=actor, reason=reason, metadata={"via": "api"})
            else:
                job = s.cancel(job_id, reason, metadata={"via": "api", "by": actor})
        resp.media = {"job": job.model_dump(mode="json")}


class CountsResource(_Base):
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        with store(self.pool) as s:
            counts = s.job_counts()
        resp.media = {"counts": [c.model_dump(mode="json") for c in counts]}
